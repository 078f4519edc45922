"""FileBuffer: one output's chunks on disk and the transitions between their states.

The committer stages frames (``plan`` then, after the commit, ``enqueue_due``); the
output's flusher takes queued chunks (``dequeue``) and reports back (``ack``,
``nack``, ``set_aside``). ``resume`` rebuilds everything from the directory at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame, new_chunk_id
from pipeline.buffer.drops import RecordDrops
from pipeline.clock import Clock
from pipeline.config import BufferConfig
from pipeline.durability import copy_file, make_dirs, sync_dir, write_atomic

log = logging.getLogger("logferry.buffer")


@dataclass
class CommitPlan:
    """The writes of one commit, across every buffer, applied together in a worker thread."""

    parts: dict[Chunk, list[bytes]] = field(default_factory=dict)
    size_before: dict[Chunk, int] = field(default_factory=dict)
    new_dirs: set[Path] = field(default_factory=set)

    def add(self, chunk: Chunk, pieces: list[bytes], size_before: int, created: bool) -> None:
        """Schedule a frame's ``pieces`` to be appended to ``chunk``."""
        if chunk not in self.parts:
            self.parts[chunk] = []
            self.size_before[chunk] = size_before
        self.parts[chunk] += pieces
        if created:
            self.new_dirs.add(chunk.directory)

    def apply(self) -> None:
        """Write and fsync every scheduled frame (runs in a worker thread)."""
        for chunk, parts in self.parts.items():
            chunk.write(*parts)
        for chunk in self.parts:
            chunk.sync()
        for directory in self.new_dirs:
            sync_dir(directory)

    def undo(self) -> None:
        """Cut every touched file back to its size before this commit, so ``apply`` can run again."""
        for chunk, size in self.size_before.items():
            if chunk.path.exists():
                chunk.truncate(size)


@dataclass
class ResumeReport:
    """What ``FileBuffer.resume`` found on disk."""

    chunks: int = 0
    records: int = 0
    rolled_back_frames: int = 0
    torn_tails: int = 0
    quarantined: list[str] = field(default_factory=list)
    max_seq: int = 0
    # (source, file key) -> (path, highest batch end seen in a frame)
    source_ends: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)


@dataclass
class _Scan:
    good_size: int = 0
    records: int = 0
    frames: int = 0
    rolled_back: int = 0
    torn: bool = False
    damaged: str | None = None


class FileBuffer:
    """One output's durable chunks: staged by time key, queued for delivery, acked or set aside."""

    def __init__(self, output: str, directory: Path, config: BufferConfig, clock: Clock) -> None:
        self.output = output
        self.directory = directory
        self.config = config
        self.clock = clock
        self.staged: dict[int, Chunk] = {}
        self.queue: deque[Chunk] = deque()
        self.in_flight: set[Chunk] = set()
        self.total_bytes = 0
        self.dropped_chunks = 0
        self._sealed: list[Chunk] = []
        self._held: list[Chunk] = []  # due, or full, but holding batches not yet confirmed (Chunk.holds)
        self._queued_event = asyncio.Event()
        self._settled_event = asyncio.Event()
        self._space_event = asyncio.Event()
        self._space_event.set()
        self.on_flusher_idle: Callable[[], None] = _nothing  # the committer enqueues held chunks then
        self.drops: RecordDrops | None = None  # records not to deliver (see pipeline.buffer.drops), set before resume

    @property
    def dead_dir(self) -> Path:
        """Chunks whose delivery failed for good, each beside a ``.error.json``."""
        return self.directory / "dead"

    @property
    def quarantine_dir(self) -> Path:
        """Damaged chunk files found at start, kept for the operator."""
        return self.directory / "quarantine"

    # -- staging (committer) -----------------------------------------------------------

    def plan(self, plan: CommitPlan, timekey: int, seq: int, pieces: list[bytes], count: int) -> Chunk:
        """Schedule a data frame (``frame.encode_parts``) for the staged chunk of ``timekey`` in this commit; the
        chunk it goes to."""
        chunk = self.staged.get(timekey)
        created = False
        if chunk is not None and self._is_full(chunk):
            self._sealed.append(self.staged.pop(timekey))
            chunk = None
        if chunk is None:
            chunk = self._new_chunk(timekey)
            header = header_frame(chunk, seq, self.output)
            plan.add(chunk, [header], 0, created=True)
            self._grow(chunk, len(header), 0)
            created = True
        plan.add(chunk, pieces, chunk.size, created)
        self._grow(chunk, sum(map(len, pieces)), count)
        return chunk

    def _new_chunk(self, timekey: int) -> Chunk:
        chunk = Chunk(self.directory, timekey, new_chunk_id(), ChunkState.STAGED, drops=self.drops)
        chunk.created_mono = self.clock.monotonic()
        self.staged[timekey] = chunk
        return chunk

    def _grow(self, chunk: Chunk, size: int, records: int) -> None:
        chunk.size += size
        chunk.records += records
        self.total_bytes += size
        self._update_space()

    def _is_full(self, chunk: Chunk) -> bool:
        return chunk.size >= self.config.chunk_limit_bytes or chunk.records >= self.config.chunk_limit_records

    def enqueue_due(self, force: bool = False) -> int:
        """Move full, expired or (``force``) all staged chunks to the queue; returns how many.

        A chunk that is due but not full stays staged, and keeps filling, while no flusher
        is free to take it: enqueuing it now would not get it delivered any sooner, and
        under a backlog this makes chunks full-sized instead of one commit each (fewer
        files, syncs and requests per record). ``on_flusher_idle`` fires when a flusher
        asks for a chunk and finds none, so a held chunk goes out then.
        """
        due = [*self._held, *self._sealed]
        self._sealed = []
        hold = self._flushers_busy() and not force
        for timekey, chunk in list(self.staged.items()):
            if chunk.holds and not self._is_full(chunk):
                continue  # it keeps filling until its batches are confirmed (cut now, chunks would be small)
            if force or self._is_full(chunk) or (not hold and self._is_due(chunk)):
                due.append(self.staged.pop(timekey))
        self._held = [chunk for chunk in due if chunk.holds]  # not even a forced flush delivers those
        due = [chunk for chunk in due if not chunk.holds]
        for chunk in due:
            chunk.enqueue()
            self.queue.append(chunk)
        if due:
            self._queued_event.set()
        return len(due)

    def _is_due(self, chunk: Chunk) -> bool:
        cfg = self.config
        age = self.clock.monotonic() - chunk.created_mono
        if self._is_full(chunk):
            return True
        if cfg.flush_mode == "interval" and age >= cfg.flush_interval:
            return True
        window_end = chunk.timekey + cfg.timekey + cfg.timekey_wait
        # The monotonic backstop keeps a window from staying open forever when the wall clock jumps back.
        return self.clock.time() >= window_end or age >= cfg.timekey + cfg.timekey_wait

    def seconds_until_due(self) -> float | None:
        """How long until the next staged chunk is due; None when nothing is staged, or
        while due chunks are held back for busy flushers (``on_flusher_idle`` wakes then)."""
        if any(not chunk.holds for chunk in self._sealed):
            return 0.0
        # A chunk holding unconfirmed batches is not waited for: their confirmation wakes the committer.
        waits = [self._wait_for(chunk) for chunk in self.staged.values() if not chunk.holds]
        if not waits or (min(waits) <= 0 and self._flushers_busy()):
            return None
        return max(0.0, min(waits))

    def _flushers_busy(self) -> bool:
        return bool(self.queue) or len(self.in_flight) >= self.config.workers

    def _wait_for(self, chunk: Chunk) -> float:
        cfg = self.config
        age = self.clock.monotonic() - chunk.created_mono
        waits = [
            chunk.timekey + cfg.timekey + cfg.timekey_wait - self.clock.time(),
            cfg.timekey + cfg.timekey_wait - age,
        ]
        if cfg.flush_mode == "interval":
            waits.append(cfg.flush_interval - age)
        return min(waits)

    # -- limits ------------------------------------------------------------------------

    def has_space(self) -> bool:
        """Whether the buffer is below ``total_limit_bytes``."""
        return self.total_bytes < self.config.total_limit_bytes

    async def wait_for_space(self) -> None:
        """Block until the buffer is below its limit (``overflow_action = "block"``)."""
        while not self.has_space():
            self._space_event.clear()
            await self._space_event.wait()

    def drop_oldest(self) -> bool:
        """Drop the oldest queued chunk not being delivered (``drop_oldest_chunk``); False if none."""
        if not self.queue:
            return False
        chunk = self.queue.popleft()
        log.error(
            "buffer full: dropped oldest chunk output=%s chunk=%s timekey=%d records=%d bytes=%d",
            self.output, chunk.name, chunk.timekey, chunk.records, chunk.size,
        )
        self._release(chunk)
        chunk.delete()
        self.dropped_chunks += 1
        return True

    def _update_space(self) -> None:
        if self.has_space():
            self._space_event.set()

    def _release(self, chunk: Chunk) -> None:
        self.total_bytes -= chunk.size
        self._update_space()

    # -- delivery (flusher) ------------------------------------------------------------

    async def dequeue(self) -> Chunk:
        """Wait for the next queued chunk and mark it in flight."""
        while not self.queue:
            self.on_flusher_idle()
            self._queued_event.clear()
            await self._queued_event.wait()
        chunk = self.queue.popleft()
        self.in_flight.add(chunk)
        return chunk

    def ack(self, chunk: Chunk) -> None:
        """The chunk was delivered: delete it."""
        self.in_flight.discard(chunk)
        chunk.delete()
        self._release(chunk)
        self._settled_event.set()

    def nack(self, chunk: Chunk) -> None:
        """Delivery failed but may be retried: back to the front of the queue."""
        self.in_flight.discard(chunk)
        self.queue.appendleft(chunk)
        self._queued_event.set()

    def set_aside(self, chunk: Chunk, error: dict[str, Any]) -> Path:
        """Move a chunk that cannot be delivered to ``dead/`` with its error; returns its new path."""
        self.in_flight.discard(chunk)
        make_dirs(self.dead_dir)
        target = self.dead_dir / chunk.path.name
        write_atomic(self.dead_dir / f"{chunk.path.name}.error.json", orjson.dumps(error))
        os.replace(chunk.path, target)
        sync_dir(self.dead_dir)
        self._release(chunk)
        self._settled_event.set()
        return target

    async def wait_drained(self) -> None:
        """Wait until no chunk is staged, queued or in flight (shutdown flush)."""
        while self.pending_chunks() > self.held_chunks():  # a held chunk waits for the next start
            self._settled_event.clear()
            await self._settled_event.wait()

    def held_chunks(self) -> int:
        """Chunks not delivered until their source confirms batches in them (see ``Chunk.holds``)."""
        return sum(1 for chunk in (*self.staged.values(), *self._sealed, *self._held) if chunk.holds)

    def pending_chunks(self) -> int:
        """Chunks staged, queued or in flight."""
        return len(self.staged) + len(self._sealed) + len(self._held) + len(self.queue) + len(self.in_flight)

    # -- start-up ----------------------------------------------------------------------

    def chunk_ids(self) -> set[str]:
        """The ids of every chunk file of this output: in the buffer, set aside, or quarantined."""
        found: set[str] = set()
        for directory in (self.directory, self.dead_dir, self.quarantine_dir):
            if directory.is_dir():
                found.update(parsed[1] for p in directory.iterdir() if (parsed := Chunk.parse_name(p)) is not None)
        return found

    def resume(self, committed_seq: int | None) -> ResumeReport:
        """Rebuild state from disk: cut torn tails, roll back uncommitted frames, quarantine damage.

        ``committed_seq`` is the last completed commit (whose positions were saved, or whose
        commit point a source's journal holds); ``None`` when the position store was lost, in
        which case nothing is rolled back.
        """
        make_dirs(self.directory)
        report = ResumeReport()
        found = [(p, Chunk.parse_name(p)) for p in self.directory.iterdir() if p.is_file()]
        chunks = [(p, parsed) for p, parsed in found if parsed is not None]
        # Creation order (the commit that wrote each header), so delivery resumes in the order it had.
        chunks.sort(key=lambda item: (_creation_seq(item[0]), item[0].stat().st_mtime_ns, item[0].name))
        for _path, (timekey, chunk_id, state) in chunks:
            chunk = Chunk(self.directory, timekey, chunk_id, state, created_mono=self.clock.monotonic(),
                          drops=self.drops)
            self._resume_chunk(chunk, committed_seq, report)
        if report.chunks:
            log.info(
                "buffer resumed output=%s chunks=%d records=%d rolled_back_frames=%d torn_tails=%d "
                "quarantined=%d", self.output, report.chunks, report.records, report.rolled_back_frames,
                report.torn_tails, len(report.quarantined),
            )
        return report

    def _resume_chunk(self, chunk: Chunk, committed_seq: int | None, report: ResumeReport) -> None:
        limit = committed_seq if chunk.state is ChunkState.STAGED else None
        scan = _scan_chunk(chunk.path, limit, report)
        file_size = chunk.path.stat().st_size
        if scan.damaged is not None:
            self._quarantine_copy(chunk, scan.damaged, report)
        elif scan.torn:
            report.torn_tails += 1
            log.warning("buffer cut torn tail output=%s chunk=%s at=%d", self.output, chunk.name, scan.good_size)
        report.rolled_back_frames += scan.rolled_back
        if scan.good_size < file_size:
            os.truncate(chunk.path, scan.good_size)
        if scan.records == 0:
            chunk.path.unlink()
            return
        chunk.size, chunk.records = scan.good_size, scan.records
        self.total_bytes += chunk.size
        report.chunks += 1
        report.records += scan.records
        if chunk.state is ChunkState.QUEUED:
            self.queue.append(chunk)
        elif chunk.timekey in self.staged:
            # Two staged chunks for one window (a crash between sealing and enqueueing): the
            # older one is complete, so it is sealed and enqueued after the first commit.
            self._sealed.append(self.staged.pop(chunk.timekey))
            self.staged[chunk.timekey] = chunk
        else:
            self.staged[chunk.timekey] = chunk
        self._update_space()
        if self.queue:
            self._queued_event.set()

    def _quarantine_copy(self, chunk: Chunk, reason: str, report: ResumeReport) -> None:
        make_dirs(self.quarantine_dir)
        target = self.quarantine_dir / chunk.path.name
        copy_file(chunk.path, target)
        report.quarantined.append(str(target))
        log.error(
            "buffer chunk damaged output=%s chunk=%s reason=%r: frames before the damage are kept, "
            "the original file is at %s", self.output, chunk.name, reason, target,
        )


def _scan_chunk(path: Path, committed_seq: int | None, report: ResumeReport) -> _Scan:
    """Walk a chunk's frames; stop at the first damaged, torn or uncommitted one."""
    scan = _Scan()
    size = path.stat().st_size
    with path.open("rb") as handle:
        while True:
            try:
                item = frame.decode_from(handle)
            except frame.FrameError as exc:
                # Damage that reaches the end of the file is what a crash mid-append leaves.
                at_end = exc.torn or handle.tell() >= size
                scan.torn, scan.damaged = at_end, None if at_end else str(exc)
                break
            if item is None:
                break
            if scan.frames == 0 and item.kind != frame.KIND_HEADER:
                scan.damaged = "first frame is not a chunk header"
                break
            if committed_seq is not None and item.seq > committed_seq:
                scan.rolled_back += 1 + _count_rest(handle)
                break
            _note_frame(item, scan, report)
    return scan


def _note_frame(item: frame.Frame, scan: _Scan, report: ResumeReport) -> None:
    scan.frames += 1
    scan.good_size += item.size
    scan.records += item.count
    report.max_seq = max(report.max_seq, item.seq)
    if item.kind == frame.KIND_DATA:
        key = (str(item.meta.get("src")), str(item.meta.get("file")))
        end = int(item.meta.get("end", 0))
        if end > report.source_ends.get(key, ("", -1))[1]:
            report.source_ends[key] = (str(item.meta.get("path")), end)


def _count_rest(handle: Any) -> int:
    """Count the frames after an uncommitted one (for the log); a torn tail there ends the count."""
    count = 0
    try:
        while frame.decode_from(handle) is not None:
            count += 1
    except frame.FrameError:
        return count  # everything from here is rolled back anyway
    return count


def _creation_seq(path: Path) -> int:
    """The sequence number of a chunk's header frame (0 if unreadable; resume sorts it out)."""
    with path.open("rb") as handle:
        prefix = handle.read(frame.HEADER.size)
    if len(prefix) < frame.HEADER.size:
        return 0
    return int(frame.HEADER.unpack(prefix)[5])


def _nothing() -> None:
    """The default ``on_flusher_idle``: no committer listening."""
