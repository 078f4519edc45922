"""``logferry check --connect``: ask each source's and output's server what it is, with the configured credentials.

A component with a probe in :mod:`pipeline.registry` (``SOURCE_PROBES``, ``OUTPUT_PROBES``:
Kafka's, which names an unreachable broker, refused credentials or a missing topic) is asked
through it. Any other output is built as the daemon builds it, asked once if it can describe
its server (``describe_server()``: Elasticsearch and OpenSearch name their distribution and
version), and closed; the others are listed as not checked. Sources without a probe (files,
a listening socket) have no server to ask and are not listed. Nothing is delivered or written:
the state directory is not touched (the outputs get a scratch directory for their context).
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.clock import SystemClock
from pipeline.config import Settings, effective_hostname
from pipeline.deadletter import DeadLetterStore
from pipeline.errors import LogferryError
from pipeline.outputs.base import Output, OutputContext
from pipeline.registry import OUTPUT_PROBES, SOURCE_PROBES
from pipeline.runtime.topology import build_output

Probe = Callable[[str, Any], Awaitable[str]]


@dataclass(frozen=True)
class Answer:
    """One component's line: reached (``ok``) or not, and what was found."""

    name: str
    ok: bool
    text: str
    kind: str = "output"

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.text}"


async def connect_all(settings: Settings) -> list[Answer]:
    """Each probed source's answer, then each output's, in configuration order."""
    answers = [await _connect_source(name, settings) for name, cfg in settings.sources.items()
               if cfg.type in SOURCE_PROBES]
    with tempfile.TemporaryDirectory(prefix="logferry-check-") as scratch:
        return answers + [await _connect(name, settings, Path(scratch)) for name in settings.outputs]


def _probe(target: str) -> Probe:
    """The probe function a registry entry names (imported only now, like the runtime classes)."""
    module_name, _, function = target.partition(":")
    found: Probe = getattr(importlib.import_module(module_name), function)
    return found


async def _connect_source(name: str, settings: Settings) -> Answer:
    cfg = settings.sources[name]
    try:
        return Answer(name, True, await _probe(SOURCE_PROBES[cfg.type])(name, cfg), "source")
    except LogferryError as exc:
        return Answer(name, False, str(exc), "source")


async def _connect(name: str, settings: Settings, scratch: Path) -> Answer:
    context = OutputContext(name, scratch, DeadLetterStore(scratch / "dead-letter"), SystemClock(),
                            effective_hostname(settings.enrich), settings.enrich)
    try:
        output = build_output(name, settings.outputs[name], context)
    except LogferryError as exc:
        return Answer(name, False, str(exc))
    try:
        return Answer(name, True, await _ask(name, settings, output))
    except LogferryError as exc:
        return Answer(name, False, str(exc))
    finally:
        await output.close()


async def _ask(name: str, settings: Settings, output: Output) -> str:
    """What the output's probe, or else its ``describe_server()``, finds out; LogferryError when it cannot."""
    cfg = settings.outputs[name]
    if cfg.type in OUTPUT_PROBES:
        return await _probe(OUTPUT_PROBES[cfg.type])(name, cfg)
    describe = getattr(output, "describe_server", None)
    if describe is None:
        return f"not checked ({cfg.type} has no connection check)"
    return str(await describe())
