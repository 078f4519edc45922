"""Committer: the one place where records become durable and positions move.

Each commit takes the processed batches that are ready, stages their frames in every
routed output's buffer, and then, in one worker thread step, writes and fsyncs the
frames, writes the dead-letter entries and the sources' journals (a forward source's
chunk ids), and saves the positions (see the invariants in :mod:`pipeline.buffer`).
The positions' save is the commit point, except in a commit that moves no position and
writes a single journal: that journal's write is its commit point, and the positions
(unchanged) are not saved (see :class:`~pipeline.sources.base.CommitJournal`).
Only after that does it enqueue chunks that are due, so a queued chunk never holds a
frame whose position could still be re-read.

A commit that fails (disk full, I/O error) is undone (files cut back), logged, and
retried with backoff; meanwhile the queues fill and the sources pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, Hold
from pipeline.buffer.file_buffer import CommitPlan, FileBuffer
from pipeline.clock import Clock
from pipeline.deadletter import DeadLetterStore
from pipeline.runtime.routing import TagRoutes
from pipeline.sources.base import CommitJournal, LineBatch
from pipeline.sources.tail.checkpoint import FilePosition, PositionStore
from pipeline.transforms.records import ProcessedBatch

log = logging.getLogger("logferry.committer")
MAX_BATCHES_PER_COMMIT = 8
COMMIT_RETRY_MAX = 30.0
UNROUTED_TAGS_NAMED = 100  # tags matching no output that the log names, each once


class EndOfInput:
    """Put on the queue after the last batch: commit what is left and return."""


END = EndOfInput()
JournalWrites = list[Callable[[], None]]


@dataclass
class CommitterStats:
    """Counters for logs and status."""

    commits: int = 0
    records: int = 0
    dead_lines: int = 0
    failed_commits: int = 0
    records_by_source: Counter[str] = field(default_factory=Counter)
    dead_by_source: Counter[str] = field(default_factory=Counter)
    unrouted_by_source: Counter[str] = field(default_factory=Counter)  # records whose tag matches no output
    failing: str | None = None  # the error of a commit being retried right now


class Committer:
    """Owns the staged chunks, the dead-letter appends and the position store."""

    def __init__(
        self,
        inbox: asyncio.Queue[ProcessedBatch | EndOfInput],
        routes: TagRoutes,
        buffers: Sequence[FileBuffer],
        positions: PositionStore,
        dead_letters: DeadLetterStore,
        clock: Clock,
        id_outputs: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.inbox = inbox
        self.id_outputs = id_outputs or {}  # output → (id_key, time_key) of the ids it takes from frames
        self.routes = routes
        self.buffers = list(buffers)
        self.positions = positions
        self.dead_letters = dead_letters
        self.clock = clock
        self.stats = CommitterStats()
        self._flush_requested = False
        self._unrouted_seen: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self.paused = asyncio.Event()  # set while a full buffer holds the sources back
        for buffer in self.buffers:
            buffer.on_flusher_idle = self._wake.set  # chunks held back for busy flushers go out now

    def request_flush(self) -> None:
        """Enqueue every staged chunk at the next step (SIGUSR1, shutdown flush)."""
        self._flush_requested = True
        self._wake.set()

    async def run(self) -> None:
        """Commit batches until END arrives; enqueue chunks as they become due."""
        getter: asyncio.Task[ProcessedBatch | EndOfInput] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.create_task(self.inbox.get())
                await self._wait(getter)
                ready: list[ProcessedBatch | EndOfInput] = []
                if getter.done():
                    ready.append(getter.result())
                    getter = None
                    ready.extend(self._drain())
                batches = [b for b in ready if isinstance(b, ProcessedBatch)]
                if batches:
                    await self.commit(batches)
                self._enqueue_due()
                if any(isinstance(b, EndOfInput) for b in ready):
                    return
        finally:
            if getter is not None:
                getter.cancel()

    async def _wait(self, getter: asyncio.Task[ProcessedBatch | EndOfInput]) -> None:
        waits = [b.seconds_until_due() for b in self.buffers]
        timeout = min((w for w in waits if w is not None), default=None)
        waker = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({getter, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
        self._wake.clear()

    def _drain(self) -> list[ProcessedBatch | EndOfInput]:
        items: list[ProcessedBatch | EndOfInput] = []
        while len(items) < MAX_BATCHES_PER_COMMIT and not self.inbox.empty():
            items.append(self.inbox.get_nowait())
        return items

    def _enqueue_due(self) -> None:
        force, self._flush_requested = self._flush_requested, False
        for buffer in self.buffers:
            buffer.enqueue_due(force=force)

    async def commit(self, batches: list[ProcessedBatch]) -> None:
        """Make ``batches`` durable in every routed buffer, then save their positions.

        A batch whose source no longer wants it stored (``LineBatch.claim``) is dropped here.
        """
        await self._make_room(batches)
        batches = [item for item in batches if item.batch.claim is None or item.batch.claim()]
        if not batches:
            return
        seq = self.positions.commit_seq + 1
        plan = CommitPlan()
        updates: dict[tuple[str, str], FilePosition | None] = {}
        staged_in: list[list[Chunk]] = []
        for item in batches:
            routed = self._routed(item.batch)
            staged_in.append(self._stage(plan, seq, item, routed))
            self.stats.records_by_source[item.batch.source] += item.records
            self.stats.dead_by_source[item.batch.source] += len(item.dead)
            if item.records and not routed:
                self._unrouted(item.batch, item.records)
            for entry in item.dead:
                self.dead_letters.add(entry)
            batch = item.batch
            if batch.forget or batch.position is not None:
                updates[(batch.source, batch.key)] = None if batch.forget else batch.position
        dead = self.dead_letters.take_pending()
        journals = _journals(batches)
        # A single journal's write can be the commit point: then the positions, unchanged, are not rewritten.
        point = not updates and len(journals) == 1
        encoded = None if point else self.positions.encode(seq, updates)
        writes: JournalWrites = [partial(journal.write, seq, entries, point) for journal, entries in journals]
        await self._apply(plan, dead, encoded, writes)
        self.positions.applied(seq, updates)
        for item, chunks in zip(batches, staged_in, strict=True):
            if item.batch.confirm is not None and chunks:
                for chunk in chunks:
                    chunk.holds += 1
                item.batch.confirm(Hold(chunks, seq, self._wake.set))
            if item.batch.on_commit is not None:
                item.batch.on_commit()
        self.stats.commits += 1
        self.stats.records += sum(b.records for b in batches)
        self.stats.dead_lines += len(dead)

    def _stage(self, plan: CommitPlan, seq: int, item: ProcessedBatch, routed: list[FileBuffer]) -> list[Chunk]:
        """Plan the batch's frames in every ``routed`` buffer; the chunks they go to."""
        batch = item.batch
        chunks: list[Chunk] = []
        for buffer in routed:
            for timekey, group in item.groups_for(buffer.output, buffer.config.timekey).items():
                meta = {"src": batch.source, "file": batch.key, "path": batch.path, "end": batch.end,
                        "offs": group.offsets}
                if group.ids is not None and (id_keys := self.id_outputs.get(buffer.output)) is not None:
                    # Named with the keys they were computed with: a frame read after a config change
                    # that no longer matches is parsed again by the output.
                    meta["ids"], meta["idk"] = group.ids, id_keys
                # One payload string per frame: its CRC is one call (per-line calls would each release
                # the GIL), and it is the only copy of the records until they reach the kernel.
                payload = b"".join(group.lines)
                count = len(group.offsets)  # a parse worker's group holds its records as one payload
                pieces = frame.encode_parts(frame.KIND_DATA, seq, count, meta, [payload], group.crc)
                chunks.append(buffer.plan(plan, timekey, seq, pieces, count))
        return list(dict.fromkeys(chunks))

    def _unrouted(self, batch: LineBatch, records: int) -> None:
        """Records no output takes (a forward client's tag that no ``match`` pattern covers): counted, and said
        once per source and tag, as fluentd warns "no patterns matched"."""
        seen = self._unrouted_seen
        if (batch.source, batch.tag) not in seen and len(seen) <= UNROUTED_TAGS_NAMED:
            seen.add((batch.source, batch.tag))  # bounded: clients choose their tags, maybe one per request
            if len(seen) > UNROUTED_TAGS_NAMED:
                log.warning("more tags match no output: not named any more (unrouted_records counts them)")
            else:
                log.warning("source %s: records tagged %r match no output's match patterns: they are dropped "
                            "(counted in status as unrouted_records)", batch.source, batch.tag)
        self.stats.unrouted_by_source[batch.source] += records

    def _routed(self, batch: LineBatch) -> list[FileBuffer]:
        """The buffers ``batch`` goes to: its source's, or by its own tag (see :class:`TagRoutes`)."""
        return self.routes.of(batch.source, batch.tag)

    async def _make_room(self, batches: list[ProcessedBatch]) -> None:
        """Apply each routed buffer's overflow action before staging more."""
        routed = {id(b): b for item in batches for b in self._routed(item.batch)}
        for buffer in routed.values():
            if buffer.config.overflow_action == "drop_oldest_chunk":
                while not buffer.has_space() and buffer.drop_oldest():
                    pass
                continue
            if not buffer.has_space():
                log.warning("buffer full output=%s bytes=%d: sources paused", buffer.output, buffer.total_bytes)
                buffer.enqueue_due(force=True)  # let its flusher see everything it can deliver
                await self._wait_for_space(buffer)
                log.info("buffer has room again output=%s: sources resumed", buffer.output)

    async def _wait_for_space(self, full: FileBuffer) -> None:
        """Wait for room in ``full`` while the other outputs keep flushing what is due for them."""
        self.paused.set()
        try:
            while not full.has_space():
                self._enqueue_due()
                waits = [w for b in self.buffers if (w := b.seconds_until_due()) is not None]
                # Woken too when a source releases held chunks (Hold.release): they may be what fills the buffer.
                space, woken = asyncio.ensure_future(full.wait_for_space()), asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({space, woken}, timeout=min(waits, default=None),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    space.cancel()
                    woken.cancel()
                self._wake.clear()
        finally:
            self.paused.clear()

    async def _apply(self, plan: CommitPlan, dead: list[bytes], encoded: bytes | None, journals: JournalWrites
                     ) -> None:
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self._write, plan, dead, encoded, journals)
                self.stats.failing = None
                return
            except OSError as exc:
                self.stats.failed_commits += 1
                self.stats.failing = f"{exc.strerror or exc} ({exc.filename or 'state directory'})"
                log.error("commit failed (%s): nothing was lost, retrying in %.1fs", exc, delay)
                await asyncio.to_thread(plan.undo)
                await asyncio.sleep(delay)
                delay = min(delay * 2, COMMIT_RETRY_MAX)

    def _write(self, plan: CommitPlan, dead: list[bytes], encoded: bytes | None, journals: JournalWrites
               ) -> None:
        plan.apply()
        written = self.dead_letters.write(dead)
        try:
            for write in journals:
                write()
            if encoded is not None:
                self.positions.save(encoded)  # the commit point: journals entries above the saved seq are void
        except OSError:
            if written is not None:  # the retry writes the same entries again
                self.dead_letters.cut_back(written)
            raise


def _journals(batches: list[ProcessedBatch]) -> list[tuple[CommitJournal, list[object]]]:
    """Each source journal this commit's batches write to, with their entries (see :class:`CommitJournal`)."""
    grouped: dict[int, tuple[CommitJournal, list[object]]] = {}
    for item in batches:
        if item.batch.journal is not None:
            journal, entry = item.batch.journal
            grouped.setdefault(id(journal), (journal, []))[1].append(entry)
    return list(grouped.values())
