"""What the daemon reports about itself: one snapshot, served as /status, /health and /metrics.

Nothing here runs on the hot path: counters live where the work happens (committer,
flushers, buffers) and are read when a snapshot is taken. The stall check remembers,
per followed file, when its committed position last moved: a file that keeps growing
while its position does not is the silent tail stall Fluentd users keep hitting, and
it also withholds the systemd watchdog ping.

A full buffer (an output outage) also holds positions still while files grow: that is
back-pressure doing its job, not a stall. While the committer reports its sources
paused, files show as paused, not stalled, and the watchdog keeps being pinged: a
restart cannot end an outage, and systemd would otherwise restart us for all of it.

An output failing counts as a problem once it has failed for ``output_failing_after``
(an outage may pass). An output that can say what keeps it from delivering at all
(``problem()``: the kafka output's brokers unreachable or credentials refused at start)
is a problem at once, as a kafka source's is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import HealthConfig
from pipeline.runtime.committer import Committer
from pipeline.runtime.topology import Topology
from pipeline.sources.base import ReportingSource, Source
from pipeline.sources.tail.source import TailSource


@dataclass
class Progress:
    """When a file's committed position last moved."""

    offset: int
    since: float


@dataclass
class Observer:
    """Builds status snapshots of a running topology."""

    topology: Topology
    committer: Committer
    config: HealthConfig
    clock_mono: Callable[[], float]
    tap_viewers: Callable[[], int] = lambda: 0
    processing: Callable[[], dict[str, Any]] = dict  # the parse workers' counts, if any
    progress: dict[tuple[str, str], Progress] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """The whole status: sources with per-file lag, outputs with buffers and errors, problems."""
        sources = {s.name: self._source(s) for s in self.topology.sources}
        outputs = {name: self._output(name) for name in self.topology.flushers}
        problems = [p for src in sources.values() for f in src["files"] if (p := f.get("problem"))]
        problems += [src["problem"] for src in sources.values() if src.get("problem")]
        problems += [o["problem"] for o in outputs.values() if o.get("problem")]
        paused = self.committer.paused.is_set()
        if paused:
            problems.append("buffer full, sources paused until an output delivers")
        if self.committer.stats.failing:
            problems.append(f"cannot write to the state directory, sources paused: {self.committer.stats.failing}")
        return {"healthy": not problems, "problems": problems, "paused": paused, "sources": sources, "outputs": outputs,
                "dead_letter_records": self.topology.dead_letters.count,
                "tap_viewers": self.tap_viewers(), "parse_workers": self.processing(),
                "transforms": {name: t.stats() for name, t in self.topology.processor.plan.transforms.items()}}

    def stalled(self, snapshot: dict[str, Any]) -> bool:
        """Whether any file is stalled (the watchdog ping is withheld then)."""
        return any(f.get("stalled") for s in snapshot["sources"].values() for f in s["files"])

    def _source(self, source: Source) -> dict[str, Any]:
        name = source.name
        stats = self.committer.stats
        entry: dict[str, Any] = {"tag": self.topology.settings.sources[name].tag,
                                 "records": stats.records_by_source[name],
                                 "dead_lines": stats.dead_by_source[name],
                                 "unrouted_records": stats.unrouted_by_source[name], "files": []}
        if isinstance(source, TailSource):
            entry["files"] = self._files(source)
            entry["unreadable"] = sorted(source.unreadable)
        elif isinstance(source, ReportingSource):
            entry.update(source.status())
        return entry

    def _files(self, source: TailSource) -> list[dict[str, Any]]:
        files = []
        for tf in list(source.files.values()):
            saved = self.topology.positions.get(source.name, tf.key)
            files.append(self._file(source.name, tf.key, tf.path, saved.offset if saved else 0, tf.fd))
        return files

    def _file(self, source: str, key: str, path: str, offset: int, fd: int) -> dict[str, Any]:
        try:
            size = os.fstat(fd).st_size
        except OSError:
            size = offset
        now = self.clock_mono()
        paused = self.committer.paused.is_set()
        seen = self.progress.get((source, key))
        # A pause restarts the stall clock: time spent held back by a full buffer is not time stalled.
        if seen is None or seen.offset != offset or size <= offset or paused:
            seen = self.progress[(source, key)] = Progress(offset, now)
        stalled = size > offset and now - seen.since >= self.config.stall_after
        entry: dict[str, Any] = {"path": path, "size": size, "offset": offset, "lag_bytes": max(size - offset, 0),
                                 "stalled": stalled, "paused": paused and size > offset}
        if stalled:
            entry["problem"] = f"{path}: grows but its position has not moved for {now - seen.since:.0f}s"
        return entry

    def _output(self, name: str) -> dict[str, Any]:
        flusher, buffer = self.topology.flushers[name], self.topology.buffers[name]
        stats = flusher.stats
        entry: dict[str, Any] = {
            "buffer_bytes": buffer.total_bytes, "buffer_limit_bytes": buffer.config.total_limit_bytes,
            "chunks": buffer.pending_chunks(), "delivered_records": stats.delivered_records,
            "delivered_chunks": stats.delivered_chunks, "failed_attempts": stats.failed_attempts,
            "chunk_retries": stats.chunk_retries, "rejected_records": flusher.rejected_records,
            "dead_chunks": stats.dead_chunks, "dropped_chunks": buffer.dropped_chunks,
            "last_success": stats.last_success, "last_error": stats.last_error,
            "last_error_time": stats.last_error_time, "failing": flusher.failing_since is not None,
        }
        problem = self._output_problem(name, entry, flusher.failing_since)
        if problem:
            entry["problem"] = problem
        return entry

    def _output_problem(self, name: str, entry: dict[str, Any], failing_since: float | None) -> str | None:
        told = getattr(self.topology.flushers[name].output, "problem", None)
        if callable(told) and (problem := told()):
            return str(problem)
        if failing_since is not None and self.clock_mono() - failing_since >= self.config.output_failing_after:
            return f"output {name} failing for {self.clock_mono() - failing_since:.0f}s: {entry['last_error']}"
        if entry["buffer_bytes"] >= self.config.buffer_high_water * entry["buffer_limit_bytes"]:
            return f"output {name} buffer at {entry['buffer_bytes']} of {entry['buffer_limit_bytes']} bytes"
        return None
