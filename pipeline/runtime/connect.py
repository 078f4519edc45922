"""``logferry check --connect``: ask each output's destination what it is, with the configured credentials.

An output that can describe its server (``describe_server()``: Elasticsearch and OpenSearch name
their distribution and version) is built as the daemon builds it, asked once, and closed; the
others are listed as not checked. Nothing is delivered or written: the state directory is not
touched (the outputs get a scratch directory for their context).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.clock import SystemClock
from pipeline.config import Settings, effective_hostname
from pipeline.deadletter import DeadLetterStore
from pipeline.errors import LogferryError
from pipeline.outputs.base import OutputContext
from pipeline.runtime.topology import build_output


@dataclass(frozen=True)
class Answer:
    """One output's line: reached (``ok``) or not, and what was found."""

    output: str
    ok: bool
    text: str

    def __str__(self) -> str:
        return f"output {self.output}: {self.text}"


async def connect_all(settings: Settings) -> list[Answer]:
    """Each output's answer, in configuration order."""
    with tempfile.TemporaryDirectory(prefix="logferry-check-") as scratch:
        return [await _connect(name, settings, Path(scratch)) for name in settings.outputs]


async def _connect(name: str, settings: Settings, scratch: Path) -> Answer:
    context = OutputContext(name, scratch, DeadLetterStore(scratch / "dead-letter"), SystemClock(),
                            effective_hostname(settings.enrich), settings.enrich)
    try:
        output = build_output(name, settings.outputs[name], context)
    except LogferryError as exc:
        return Answer(name, False, str(exc))
    try:
        describe = getattr(output, "describe_server", None)
        if describe is None:
            return Answer(name, True, f"not checked ({settings.outputs[name].type} has no connection check)")
        return Answer(name, True, str(await describe()))
    except LogferryError as exc:
        return Answer(name, False, str(exc))
    finally:
        await output.close()
