"""``logferry import``: read a Fluentd config, write logferry's, check it, seed positions, report.

The written TOML is read back and validated exactly as ``logferry check`` does before
anything is written to disk, so an import never leaves a config the daemon refuses.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import settings_from_dict
from pipeline.errors import ConfigError
from pipeline.importer import positions
from pipeline.importer.fluentd_conf import parse_file
from pipeline.importer.toml_writer import render
from pipeline.importer.translate import NothingToRun, Translation, translate


@dataclass(frozen=True)
class ImportRequest:
    """What the command line asked for."""

    config: Path
    output: Path | None = None  # None: the TOML goes to stdout
    positions: list[Path] | None = None  # None: no seeding; []: the pos_files the config names
    state_dir: Path | None = None
    force: bool = False


def run_import(request: ImportRequest) -> int:
    """Do the import; the report goes to stderr. Returns 0 (all translated) or 2 (partly)."""
    translation = _translate(request)
    text = render(translation.tables, header=_header(request))
    settings = settings_from_dict(tomllib.loads(text), origin="imported config")  # what `logferry check` does
    if request.output is not None and request.output.exists() and not request.force:
        raise ConfigError(f"{request.output} exists; pass --force to replace it")
    # Seeding first: a position file it cannot read stops the import before anything is written.
    if request.positions is not None:
        files = request.positions or [Path(s.pos_file) for s in translation.sources if s.pos_file]
        if not files:
            raise ConfigError("--positions: no position file given and the config names no pos_file")
        positions.seed(files, translation.sources, settings.state_dir, translation.report)
    else:
        _remind_positions(translation)
    _write(request.output, text)
    sys.stderr.write(translation.report.render())
    if request.output is not None:
        sys.stderr.write(f"wrote {request.output}; it passes `logferry check`\n")
    return translation.report.exit_status


def _remind_positions(translation: Translation) -> None:
    for source in translation.sources:
        if source.pos_file:
            start = "their head" if source.table["read_from_head"] else "their end"
            translation.report.add("note", source.directive.where, f"pos_file {source.pos_file}",
                                   "to continue where td-agent stopped, stop td-agent and run the import again with "
                                   f"--positions; without it logferry's first start reads the files from {start}")


def _translate(request: ImportRequest) -> Translation:
    try:
        return translate(parse_file(request.config), str(request.state_dir) if request.state_dir else None)
    except NothingToRun as exc:
        raise ConfigError(f"{request.config}: nothing to import: {exc}") from exc


def _header(request: ImportRequest) -> list[str]:
    return [f"logferry configuration imported from {request.config} by `logferry import`.",
            "Each table says which Fluentd lines it comes from; the import's report lists what was not",
            "translated and where each secret goes. Validate with: logferry check -c THIS_FILE"]


def _write(output: Path | None, text: str) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
