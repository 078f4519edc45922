"""RedactTransform: the batch step that finds the candidate records of a batch and redacts them.

The built-in detectors find candidates in two stages: :class:`~pipeline.transforms.redact.engine.LineFilter`
over the batch's serialised lines, then the field-level
:class:`~pipeline.transforms.redact.engine.Prefilter` over the decoded fields of the lines it flagged.
User patterns (any anchor may match anything) and field names the line filter cannot find in a
line take the field-level stage alone; so does a batch after one whose lines were mostly flagged
(records carrying a token-shaped value outside the scanned fields, or slashes escaped as ``\\/``),
where the first stage would only add its scan, until a later batch is tried again.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.durability import write_atomic
from pipeline.errors import ConfigError
from pipeline.transforms.base import Records, Replaced
from pipeline.transforms.redact.detectors import BUILTIN, Detector
from pipeline.transforms.redact.engine import AnchorError, LineFilter, Prefilter, Redactor, plain_field

if TYPE_CHECKING:  # not imported at run time: a parse worker builds this transform without pydantic
    from pipeline.transforms.redact.config import RedactTransformConfig

DEAD_LETTER_TEXTS = ("line", "reason", "error_reason")  # what a dead-letter entry may quote of a record
RETRY_LINE_FILTER = 16  # batches that skip the line filter after one whose lines it mostly flagged


@dataclass(frozen=True, slots=True)
class RedactSpec:
    """What a redact transform is built from: its config reduced to plain values, the HMAC key read.

    A parse worker gets this (pickled) rather than the config: it then loads neither pydantic nor the
    config models, ~13 MB less resident per worker (docs/PERFORMANCE.md §4).
    """

    modes: dict[str, str]  # every detector's mode: built-in ones, then the user patterns
    patterns: tuple[tuple[str, str, str | None], ...]  # (name, regex, anchor) of each user pattern
    fields: tuple[str, ...]
    summary_key: str
    key: bytes | None = field(repr=False)  # a secret: never in a repr, so never in a log line

    @classmethod
    def of(cls, name: str, config: RedactTransformConfig) -> RedactSpec:
        """The spec of ``config``, its key file read: ConfigError if it cannot be."""
        patterns = tuple((n, p.regex, p.anchor) for n, p in config.patterns.items())
        return cls(dict(config.modes()), patterns, tuple(config.fields), config.summary_key, _key(name, config))


def _key(name: str, config: RedactTransformConfig) -> bytes | None:
    if config.hash_key_file is not None:
        try:
            return config.hash_key_file.read_bytes().rstrip(b"\n")
        except OSError as exc:
            raise ConfigError(
                f"transforms.{name}.hash_key_file: cannot read {config.hash_key_file}: {exc.strerror or exc}"
            ) from exc
    if config.hash_key is not None:
        return config.hash_key.get_secret_value().encode()
    return None


def has_duplicate_keys(line: bytes) -> bool:
    """Whether an object in the JSON ``line`` has a key twice (slow: for the rare line an anchor flagged).

    >>> has_duplicate_keys(b'{"a":1,"b":{"c":2,"c":3}}'), has_duplicate_keys(b'{"a":1,"b":{"a":2}}')
    (True, False)
    """
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({key for key, _ in items}) < len(items)
        return {}

    try:
        json.loads(line, object_pairs_hook=pairs)
    except (RecursionError, ValueError):
        return True  # cannot tell (nested deeper than Python's parser goes): written back, to be sure
    return found


class RedactTransform:
    """``type = "redact"``: mask, hash or drop personal data and secrets in the scanned fields."""

    def __init__(self, name: str, config: RedactTransformConfig | RedactSpec) -> None:
        """Built from its config (the key file read here), or from the spec a parse worker is given."""
        self.name = name
        self.spec = spec = config if isinstance(config, RedactSpec) else RedactSpec.of(name, config)
        modes = spec.modes
        detectors = [d for d in BUILTIN if modes[d.name] != "off"]
        always: list[int] = []
        for pattern_name, regex, anchor in spec.patterns:
            if modes[pattern_name] == "off":
                continue
            anchors = (anchor.encode(),) if anchor else ()
            if not anchors:
                always.append(len(detectors))
            detectors.append(Detector(pattern_name, anchors, re.compile(regex)))
        self.detectors = detectors
        try:
            self.prefilter = Prefilter(detectors, always)
        except AnchorError as exc:
            raise ConfigError(f"transforms.{name}.patterns: an anchor does not compile: {exc}") from exc
        self.line_filter: LineFilter | None = None
        built_in_only = all(modes[pattern_name] == "off" for pattern_name, _, _ in spec.patterns)
        if detectors and built_in_only and all(map(plain_field, spec.fields)):
            try:
                self.line_filter = LineFilter(detectors, list(spec.fields))
            except AnchorError as exc:
                raise ConfigError(f"transforms.{name}.fields: the line filter does not compile: {exc}") from exc
        self.skip_line_filter = 0
        self.redactor = Redactor(detectors, dict(modes), list(spec.fields), spec.key)
        self.summary_key = spec.summary_key
        self.counts: Counter[str] = Counter()
        self.records_redacted = 0
        self.duplicate_keys = 0  # lines written back without their duplicate keys (see ``apply``)
        self._field_keys = [orjson.dumps(name) for name in spec.fields]  # each scanned key as a line holds it

    def apply(self, lines: list[bytes], records: Records) -> tuple[list[bytes], Records]:
        """The batch with every candidate record redacted; the others' lines are kept as they are (and their
        records are not read: they may be parsed only when read)."""
        out_lines: list[bytes] | None = None
        changed: dict[int, dict[str, Any]] = {}
        candidates, flagged = self.candidates(lines, records)
        for i, hits in sorted(candidates.items()):
            record = orjson.loads(lines[i])  # the whole line (with the enrichment): it is written back
            counts = self.redactor.redact(record, hits)
            if not counts:
                continue
            self._summarise(record, counts)
            changed[i] = record
        # Without the line filter, lines where a scanned key is written twice at the top level (a cheap look).
        maybe = flagged if self.line_filter is not None else [
            i for i, line in enumerate(lines) if any(line.count(key) > 1 for key in self._field_keys)]
        for i in maybe:
            if i not in changed and has_duplicate_keys(lines[i]):
                # A key written twice: the parse (and so the check) kept the last value, while the line holds the
                # first too, unchecked. Written back as parsed, the line holds only what was checked.
                changed[i] = orjson.loads(lines[i])
                self.duplicate_keys += 1
        if not changed:
            return lines, records
        out_lines = list(lines)
        for i, record in changed.items():
            out_lines[i] = self._written_back(lines[i], record)
        return out_lines, Replaced(records, changed)

    def _written_back(self, line: bytes, record: dict[str, Any]) -> bytes:
        """The record as its new line; one too deep for orjson to write (over 255 levels) is its old line with
        every detector's finds masked in its text instead."""
        try:
            # Copied out of orjson's buffer, which holds at least 4 KiB (see pipeline.transforms.records).
            return bytes(memoryview(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)))
        except (TypeError, orjson.JSONEncodeError):
            counts: Counter[str] = Counter()
            text = self.redactor.redact_text(line.decode("utf-8", "replace"), counts)
            self.counts.update(counts)
            return text.encode("utf-8", "surrogatepass")

    def candidates(self, lines: list[bytes], records: Records) -> tuple[dict[int, frozenset[int]], list[int]]:
        """Record index → indexes of the detectors to run on it, for the records an anchor matched in; and the
        lines the line filter flagged (an anchor in their bytes, maybe outside what the parse kept)."""
        line_filter = self.line_filter
        if line_filter is None:
            return self.prefilter.scan(*self.redactor.texts(records), len(records)), []
        flagged = line_filter.flagged(lines)  # one Hyperscan pass, also where the field-level check takes all
        if self.skip_line_filter:
            self.skip_line_filter -= 1
            return self.prefilter.scan(*self.redactor.texts(records), len(records)), flagged
        if not flagged:
            return {}, flagged
        if 2 * len(flagged) > len(lines):
            self.skip_line_filter = RETRY_LINE_FILTER
        subset = [records[i] for i in flagged]
        found = self.prefilter.scan(*self.redactor.texts(subset), len(subset))
        return {flagged[j]: hits for j, hits in found.items()}, flagged

    def _summarise(self, record: dict[str, Any], counts: Counter[str]) -> None:
        self.counts.update(counts)
        self.records_redacted += 1
        previous = record.get(self.summary_key)
        if isinstance(previous, dict):  # a second redact transform in the chain adds to the first one's counts
            counts = counts + Counter({k: v for k, v in previous.items() if type(v) is int})
        record[self.summary_key] = dict(counts)

    def dead_letter(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A dead-letter entry with its line and its reasons redacted (a reason may quote the line: a
        parse error, or a server refusing a document). A line that is not UTF-8 is decoded with
        replacement characters first: its bytes would otherwise be stored as they are."""
        entry = dict(entry)
        raw = entry.pop("line_base64", None)
        if isinstance(raw, str):
            entry["line"] = base64.b64decode(raw).decode("utf-8", "replace")
            entry["decoded_with_replacement"] = True
        counts: Counter[str] = Counter()
        for key in DEAD_LETTER_TEXTS:
            text = entry.get(key)
            if isinstance(text, str):
                entry[key] = self.redactor.redact_text(text, counts)
        if isinstance(blob := entry.get("blob"), str):
            entry["blob_bytes"] = self._redact_blob(Path(blob), counts)
        self.counts.update(counts)
        if counts:
            entry[self.summary_key] = dict(counts)
        return entry

    def _redact_blob(self, blob: Path, counts: Counter[str]) -> int:
        """Redact the copy of an oversized line (its first ``max_line_bytes``) in place; its size after.

        Rare and up to ``max_line_bytes`` (16 MiB by default) of text: a cut UTF-8 character at its end, or
        a line that is not UTF-8, is written back with replacement characters.
        """
        raw = blob.read_bytes()
        text = raw.decode("utf-8", "replace")
        redacted = self.redactor.redact_text(text, counts)
        if redacted == text:
            return len(raw)
        data = redacted.encode("utf-8", "surrogatepass")
        write_atomic(blob, data)
        return len(data)

    def stats(self) -> dict[str, Any]:
        """Redactions per detector (every enabled one, zeros included) and records changed."""
        return {"type": "redact", "records_redacted": self.records_redacted,
                "redactions": {d.name: self.counts[d.name] for d in self.detectors}}

    def take_tally(self) -> tuple[int, dict[str, int]]:
        """(records redacted, redactions per detector) since the last take; reset."""
        tally = (self.records_redacted, dict(self.counts))
        self.records_redacted, self.counts = 0, Counter()
        return tally

    def add_tally(self, tally: tuple[int, dict[str, int]]) -> None:
        """Add a worker's :meth:`take_tally`."""
        self.records_redacted += tally[0]
        self.counts.update(tally[1])

    def __reduce__(self) -> tuple[type[RedactTransform], tuple[str, RedactSpec]]:
        # Into a parse worker: compiled there again (Hyperscan databases do not pickle) from the spec, the
        # key read here at load time, so the worker neither reads the key file nor can fail on it later.
        return RedactTransform, (self.name, self.spec)


__all__ = ["RedactTransform"]
