"""Topology: everything the daemon runs, built from validated settings, in start-up order.

State directory layout::

    STATE_DIR/lock                     one daemon per state directory
    STATE_DIR/positions.json           committed read positions (pipeline.sources.tail.checkpoint)
    STATE_DIR/dead-letter/             bad lines (pipeline.deadletter)
    STATE_DIR/buffer/OUTPUT/           chunks, dead/ and quarantine/ (pipeline.buffer)
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import durability
from pipeline.buffer.drops import RecordDrops
from pipeline.buffer.file_buffer import FileBuffer, ResumeReport
from pipeline.clock import Clock
from pipeline.config import OutputConfig, Settings, SourceConfig, effective_hostname
from pipeline.deadletter import DeadLetterStore
from pipeline.errors import ConfigError, StateError
from pipeline.outputs.base import Output, OutputContext
from pipeline.outputs.flusher import Flusher
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.registry import OUTPUT_CLASSES, SOURCE_CLASSES, SOURCE_COMMIT_POINTS, TRANSFORM_CLASSES
from pipeline.runtime.routing import TagRoutes, tag_matches
from pipeline.sources.base import Source, SourceContext
from pipeline.sources.tail.checkpoint import FilePosition, PositionStore
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.discovery import matched_files
from pipeline.sources.tail.heads import FP_BYTES, fingerprint
from pipeline.sources.tail.reader import file_key, last_line_end
from pipeline.transforms.base import Transform
from pipeline.transforms.plan import SourceRoute, TransformPlan
from pipeline.transforms.records import RecordProcessor

log = logging.getLogger("logferry.topology")


@dataclass
class Topology:
    """The built pipeline: sources → processor → committer → buffers → flushers → outputs."""

    settings: Settings
    sources: list[Source]
    processor: RecordProcessor
    buffers: dict[str, FileBuffer]
    outputs: dict[str, Output]
    flushers: dict[str, Flusher]
    routes: TagRoutes
    positions: PositionStore
    dead_letters: DeadLetterStore
    lock_fd: int
    resume_reports: dict[str, ResumeReport] = field(default_factory=dict)
    id_outputs: dict[str, tuple[str, str]] = field(default_factory=dict)  # outputs taking ids from frames

    def release(self) -> None:
        """Give up the state directory lock."""
        os.close(self.lock_fd)


def build(settings: Settings, clock: Clock) -> Topology:
    """Open the state directory, resume buffers and positions, and wire every component."""
    durability.configure(settings.fsync)
    state = settings.state_dir
    lock_fd = _lock_state_dir(state)
    positions = PositionStore(state / "positions.json")
    positions.load()
    journal_points = _journal_commit_points(state)  # commits that moved no position saved no positions
    if not positions.corrupt:
        positions.commit_seq = max(positions.commit_seq, journal_points)
    dead_letters = DeadLetterStore(state / "dead-letter")
    dead_letters.prepare()
    committed = None if positions.corrupt else positions.commit_seq
    drops = RecordDrops(state)
    buffers, reports = _resume_buffers(settings, clock, committed, drops)
    buffered = frozenset().union(*(buffer.chunk_ids() for buffer in buffers.values()))
    drops.load(buffered)
    if positions.corrupt:
        _rebuild_positions(positions, reports)
        positions.commit_seq = max(positions.commit_seq, journal_points)  # their chunk ids stay committed
        # Saved at once: commits that move no position (a forward source's) save none, so the rebuilt
        # positions would else live in memory only, and the next start take itself for a first one.
        positions.save_now({})
    _cut_void_journal_entries(state, positions.commit_seq)
    outputs, flushers = {}, {}
    hostname = effective_hostname(settings.enrich)
    routes = _routes(settings, buffers)
    plan = _transform_plan(settings, routes)
    for name, cfg in settings.outputs.items():
        scrub = functools.partial(plan.dead_letter, _chains_into(settings, routes, name))
        context = OutputContext(name, buffers[name].directory, dead_letters, clock, hostname, settings.enrich, scrub)
        outputs[name] = build_output(name, cfg, context)
        flushers[name] = Flusher(name, outputs[name], buffers[name], clock)
    for src, routed in routes.items():
        if not routed and src not in routes.by_record_tag:
            log.warning("source %s (tag %s) matches no output: its records are read and dropped", src,
                        settings.sources[src].tag)
    if not positions.existed and any(_starts_at_end(cfg) for cfg in settings.sources.values()):
        _save_start_positions(settings, positions)
    # Where a first start matters (read_from_head = false) its offsets are saved now: to the
    # sources every start is a restart, and a file without a saved position appeared after
    # that first look, so it is read from its head.
    source_context = SourceContext(positions, dead_letters, clock, state, settings.enrich.time_key, drops, buffered)
    sources = [_build_source(name, cfg, source_context) for name, cfg in settings.sources.items()]
    widths = {b.config.timekey for b in buffers.values()}
    id_outputs, id_sources = _carried_ids(settings, routes)
    processor = RecordProcessor(settings.enrich, widths, clock, plan, id_sources)
    return Topology(settings, sources, processor, buffers, outputs, flushers, routes, positions, dead_letters,
                    lock_fd, reports, id_outputs)


def build_transforms(settings: Settings) -> dict[str, Transform]:
    """Every transform a source or output uses, built (key files read, anchors compiled): ConfigError if not."""
    used = {name for table in (settings.sources, settings.outputs) for cfg in table.values()
            for name in cfg.transforms}
    transforms: dict[str, Transform] = {}
    for name in sorted(used):
        cfg = settings.transforms[name]
        transforms[name] = _runtime_class("transforms", name, cfg.type, TRANSFORM_CLASSES[cfg.type])(name, cfg)
    return transforms


def _transform_plan(settings: Settings, routes: dict[str, list[FileBuffer]]) -> TransformPlan:
    """Build the transforms some source or output uses, and each source's chains.

    A source appears in the plan only when a chain concerns it: the others pay nothing.
    """
    plan = TransformPlan(build_transforms(settings))
    for src, routed in routes.items():
        outputs = {b.output: (b.config.timekey, tuple(settings.outputs[b.output].transforms))
                   for b in routed if settings.outputs[b.output].transforms}
        chain = tuple(settings.sources[src].transforms)
        if chain or outputs:
            plan.routes[src] = SourceRoute(chain, outputs, plain=len(outputs) < len(routed))
    return plan


IdKeys = tuple[str, str]  # (id_key, time_key)


def _carried_ids(settings: Settings, routes: TagRoutes) -> tuple[dict[str, IdKeys], dict[str, IdKeys]]:
    """The outputs that take their records' ids from the frames, and the sources whose ids are computed for them.

    A kafka output without a key field needs nothing of a record but its id: the processor computes it
    while it holds the parsed record, so the output does not parse every record again. Only for sources
    routed by their configured tag, without transforms, whose every such output uses the same id and time
    keys; any other frame carries no ids and the output parses its records as before.
    """
    outputs = {name: (cfg.id_key, cfg.time_key) for name, cfg in settings.outputs.items()
               if isinstance(cfg, KafkaOutputConfig) and cfg.key_field is None and not cfg.transforms}
    sources: dict[str, IdKeys] = {}
    for src, routed in routes.items():
        if src in routes.by_record_tag or settings.sources[src].transforms:
            continue
        keys = {outputs[b.output] for b in routed if b.output in outputs}
        if len(keys) == 1:
            sources[src] = keys.pop()
    return outputs, sources


def _chains_into(settings: Settings, routes: TagRoutes, output: str) -> tuple[str, ...]:
    """Every transform the records of ``output`` may have gone through: the chains of the sources
    that may feed it (routed by record tag: any), then its own; each once."""
    feeding = [src for src in settings.sources
               if src in routes.by_record_tag or any(b.output == output for b in routes.get(src, []))]
    names = [name for src in feeding for name in settings.sources[src].transforms]
    return tuple(dict.fromkeys([*names, *settings.outputs[output].transforms]))


def _routes(settings: Settings, buffers: dict[str, FileBuffer]) -> TagRoutes:
    """Each source's buffers by its tag; a source routing by its records' tags may reach any output."""
    outputs = [(cfg.match, buffers[name]) for name, cfg in settings.outputs.items()]
    by_record_tag = {src for src, scfg in settings.sources.items() if scfg.routes_by_record_tag()}
    fixed = {
        src: [b for patterns, b in outputs if src in by_record_tag or tag_matches(patterns, scfg.tag)]
        for src, scfg in settings.sources.items()
    }
    return TagRoutes(fixed, outputs, by_record_tag)


def _lock_state_dir(state: Path) -> int:
    try:
        durability.make_dirs(state)
        fd = durability.open_file(state / "lock", os.O_RDWR)
    except OSError as exc:
        raise StateError(f"state_dir {state}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StateError(f"state_dir {state} is in use by another logferry process") from exc
    return fd


def _resume_buffers(
    settings: Settings, clock: Clock, committed: int | None, drops: RecordDrops
) -> tuple[dict[str, FileBuffer], dict[str, ResumeReport]]:
    buffers, reports = {}, {}
    for name, cfg in settings.outputs.items():
        buffer = FileBuffer(name, settings.state_dir / "buffer" / name, cfg.buffer, clock)
        buffer.drops = drops
        reports[name] = buffer.resume(committed)
        buffers[name] = buffer
    return buffers, reports


def _save_start_positions(settings: Settings, positions: PositionStore) -> None:
    """First start with ``read_from_head = false``: save the files' ends, before anything runs.

    Positions are otherwise written only by a commit. Without this, a daemon that read no
    line before it stopped would meet no position store at its next start, take that for a
    first start again and start at the files' new ends: every line written while it was
    down would be skipped. The store is written even with no file to save, so that files
    created while the daemon is down are read from their head.
    """
    starts: dict[tuple[str, str], FilePosition | None] = {}
    for name, cfg in settings.sources.items():
        if _starts_at_end(cfg):
            assert isinstance(cfg, TailSourceConfig)
            starts.update(_end_positions(name, cfg))
    positions.save_now(starts)
    if starts:
        log.info("first start: %d existing files are followed from their end (read_from_head = false)",
                 len(starts))


def _starts_at_end(cfg: SourceConfig) -> bool:
    return isinstance(cfg, TailSourceConfig) and not cfg.read_from_head


def _end_positions(source: str, cfg: TailSourceConfig) -> dict[tuple[str, str], FilePosition | None]:
    """The end of the last whole line of each file a source matches now, with its fingerprint."""
    ends: dict[tuple[str, str], FilePosition | None] = {}
    for path in matched_files(cfg).values():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # unreadable or gone: the source reports it, and reads it from its head once it can
        try:
            st = os.fstat(fd)  # of what was opened, should the path have been replaced since the glob
            key, end = file_key(st), last_line_end(fd, st.st_size)
            fp, fp_len = fingerprint(fd, FP_BYTES)
            ends[(source, key)] = FilePosition(source, key, path, end, fp, fp_len)
        finally:
            os.close(fd)
    return ends


def _rebuild_positions(positions: PositionStore, reports: dict[str, ResumeReport]) -> None:
    """After a damaged position store: resume each file after the last batch any buffer still holds."""
    ends: dict[tuple[str, str], tuple[str, int]] = {}
    for report in reports.values():
        for key, (path, end) in report.source_ends.items():
            if end > ends.get(key, ("", -1))[1]:
                ends[key] = (path, end)
    # fp_len 0: no fingerprint survived, so any content matches; the offset alone is used.
    rebuilt = {key: FilePosition(key[0], key[1], path, end, "", 0) for key, (path, end) in ends.items()}
    positions.applied(max((r.max_seq for r in reports.values()), default=0), dict(rebuilt))
    log.warning("positions rebuilt from buffers for %d files", len(rebuilt))


def _runtime_class(section: str, name: str, type_name: str, target: str) -> type:
    """Import a component's runtime class from its registry entry (see :mod:`pipeline.registry`)."""
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{section}.{name}.type: {type_name!r} cannot run in this version ({exc.name} is missing)"
        ) from exc
    cls: type = getattr(module, class_name)
    return cls


def _journal_commit_points(state: Path) -> int:
    """The highest commit sequence number whose commit point a source's journal holds (0 if none)."""
    return max((importlib.import_module(module).committed_seq(state) for module in SOURCE_COMMIT_POINTS.values()),
               default=0)


def _cut_void_journal_entries(state: Path, committed: int) -> None:
    """Cut the entries of commits that did not complete out of every source journal, configured or not: a
    source added again later would take them for committed (the commit sequence numbers are used again)."""
    for module in SOURCE_COMMIT_POINTS.values():
        importlib.import_module(module).cut_void(state, committed)


def _build_source(name: str, cfg: SourceConfig, context: SourceContext) -> Source:
    source: Source = _runtime_class("sources", name, cfg.type, SOURCE_CLASSES[cfg.type])(name, cfg, context)
    return source


def build_output(name: str, cfg: OutputConfig, context: OutputContext) -> Output:
    """The runtime object of output ``name`` (its class imported only now; ConfigError if it cannot run)."""
    output: Output = _runtime_class("outputs", name, cfg.type, OUTPUT_CLASSES[cfg.type])(cfg, context)
    return output
