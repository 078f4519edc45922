"""Which chunk ids are committed: a resent chunk is acknowledged again, never stored twice.

Layout::

    STATE_DIR/forward/SOURCE/chunks-<unix start>.jsonl   one [seq, time, chunk id] line per committed chunk,
                                                         or one [seq, time, [chunk id, ...]] per commit
                                                         whose commit point it is

The journal is written inside the commit that stores the chunk's records (see
:class:`~pipeline.sources.base.CommitJournal`): lines are appended and fsynced after the
frames and before the positions, whose saved commit sequence number is the commit point.
A commit that moves no file position and writes this journal only (chunks of one forward
source, the usual case) saves no positions: its one line, holding all its chunk ids, is its
commit point (:func:`committed_seq` finds it at the next start), which spares each such
commit the positions' atomic rewrite, a file and a directory fsync (``benchmarks/forward.py``,
one connection: 0.57-0.64x the floor against 0.49-0.59x, docs/PERFORMANCE.md). At start,
lines with a higher ``seq`` than the commit point belong to a commit that never completed
(its frames are rolled back too) and are cut out before anything runs, so after a kill -9
either the records and the id are both there, or neither is: the client's resend is then
acknowledged without storing, or stored once. Each commit costs one append of its new ids,
whatever the window holds (the position store is rewritten whole at each commit, so ids kept
there would cost every commit ~3.4 ms per 1,000 ids on this machine).

The window is bounded by age (``chunk_window`` seconds; out_forward resends within
``ack_response_timeout``, 190 s by default, fluent-logger-golang on reconnect) and by
count in memory (``chunk_window_max``). The journal rolls over to a new segment once
its current one is ``chunk_window`` old; a segment is deleted when its successor is that
old too, so every id in the window is on disk. The segment holding the journal's newest
commit point is kept whatever its age: while commits fail (a full disk) segments roll over
empty, and deleting it would roll its commit back at the next start. A resend that arrives
while the first copy is still on its way to the buffers waits for that copy's commit and is
acknowledged with it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import orjson

from pipeline.durability import append_whole, make_dirs, open_file, sync_dir, write_atomic

log = logging.getLogger("logferry.forward")


class ChunkJournal:
    """The on-disk record of committed chunk ids of one source (see the module doc)."""

    def __init__(self, directory: Path, window: float, now: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.window = window
        self.now = now
        self._current: Path | None = None
        self._current_start = 0.0
        self._point_segment: Path | None = None  # where the newest commit point line is: never deleted

    def load(self, committed_seq: int) -> list[tuple[float, str]]:
        """Every (time, chunk id) of completed commits, oldest segment first; void lines are cut out."""
        make_dirs(self.directory)  # 0750 and files 0640 whatever the umask: chunk ids are the daemon's own
        found: list[tuple[float, str]] = []
        for path in self._segments():
            found += self._load_segment(path, committed_seq)
        segments = self._segments()
        if segments:
            self._current, self._current_start = segments[-1], _start_of(segments[-1])
        return found

    def _load_segment(self, path: Path, committed_seq: int) -> list[tuple[float, str]]:
        kept: list[bytes] = []
        found: list[tuple[float, str]] = []
        void = 0
        for line in path.read_bytes().splitlines():
            parsed = _parse(line)
            if parsed is None or parsed[0] > committed_seq:  # cut short by a crash mid-append, or void
                void += 1
                continue
            seq, when, chunks, point = parsed
            if point:
                self._point_segment = path  # segments are loaded oldest first
            kept.append(line + b"\n")
            found += [(when, chunk) for chunk in chunks]
        if void:
            write_atomic(path, b"".join(kept))
            log.info("chunk journal %s: %d ids of commits that did not complete dropped", path, void)
        return found

    def write(self, seq: int, items: list[object], point: bool = False) -> None:
        """Append the chunk ids of commit ``seq`` and fsync (committer's worker thread); with ``point``, as
        the commit's commit point: one line, whole or void after a crash (see the module doc)."""
        now = self.now()
        if self._current is None or now - self._current_start >= self.window:
            self._roll(now)
        assert self._current is not None
        if point:
            data = orjson.dumps([seq, now, items], option=orjson.OPT_APPEND_NEWLINE)
        else:
            data = b"".join(orjson.dumps([seq, now, chunk], option=orjson.OPT_APPEND_NEWLINE) for chunk in items)
        fd = open_file(self._current, os.O_WRONLY | os.O_APPEND)
        try:
            # A failed write is cut back: the commit is undone and retried, and a commit point line left
            # here (its fsync failed, yet it may be on disk) would make a restart take its chunks for
            # committed while their frames are rolled back.
            append_whole(fd, [data], self._cut_back_failed)
        finally:
            os.close(fd)
        if point:
            self._point_segment = self._current

    def _cut_back_failed(self, exc: OSError) -> None:
        log.error("cannot cut the chunk journal %s back after a failed commit (%s): restarting before "
                  "a commit succeeds may acknowledge a resend of its chunks without storing them",
                  self._current, exc)

    def _roll(self, now: float) -> None:
        """Start a new segment; delete those whose successor is a whole window old."""
        segments = self._segments()
        self._current, self._current_start = self.directory / f"chunks-{int(now)}.jsonl", float(int(now))
        for older, newer in zip(segments, [*segments[1:], self._current], strict=False):
            if older == self._point_segment:
                break  # it and every newer segment stay (see the module doc)
            if now - _start_of(newer) >= self.window:
                older.unlink(missing_ok=True)
        os.close(open_file(self._current, os.O_WRONLY))
        sync_dir(self.directory)

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("chunks-*.jsonl"), key=_start_of)


def _start_of(path: Path) -> float:
    return float(path.stem.removeprefix("chunks-"))


def _parse(line: bytes) -> tuple[int, float, list[str], bool] | None:
    """A journal line's (seq, time, chunk ids, whether it is its commit's commit point); None if torn."""
    try:
        seq, when, chunk = orjson.loads(line)
        if isinstance(chunk, list):
            return int(seq), float(when), [str(c) for c in chunk], True
        return int(seq), float(when), [str(chunk)], False
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None


def committed_seq(state_dir: Path) -> int:
    """The highest commit sequence number a forward journal line is the commit point of, 0 if none.

    Every source's journal under ``state_dir`` counts, configured or not: a source removed from the
    config since may hold the last commit point, and its frames are in the buffers like any other.
    """
    highest = 0
    for path in (state_dir / "forward").glob("*/chunks-*.jsonl"):
        for line in path.read_bytes().splitlines():
            parsed = _parse(line)
            if parsed is not None and parsed[3]:
                highest = max(highest, parsed[0])
    return highest


def cut_void(state_dir: Path, committed: int) -> None:
    """Cut the lines of commits above ``committed`` out of every forward journal under ``state_dir``, whether or
    not its source is configured now (at start, before any source runs: see :mod:`pipeline.registry`)."""
    for directory in sorted((state_dir / "forward").glob("*")):
        if directory.is_dir():
            ChunkJournal(directory, 0.0).load(committed)


class ChunkWindow:
    """Committed and in-flight chunk ids of one source.

    Its times are those its caller passes to ``done`` and ``expire``: the source passes the monotonic
    clock, so that a step of the wall clock (NTP, a VM resumed) neither forgets ids a resend may still
    carry nor keeps them for ever. The journal's times are the wall clock's (they outlive the process):
    ``wall_to_caller`` (the caller's clock minus the wall clock, at start) moves them onto the caller's.
    """

    def __init__(self, journal: ChunkJournal, committed_seq: int, seconds: float, limit: int,
                 wall_to_caller: float = 0.0) -> None:
        self.journal = journal
        self.seconds = seconds
        self.limit = limit
        self.committed: OrderedDict[str, float] = OrderedDict()  # oldest first: the order entries expire in
        for when, chunk in journal.load(committed_seq):
            self.committed[chunk] = when + wall_to_caller
            self.committed.move_to_end(chunk)
        self.in_flight: dict[str, list[Callable[[], None]]] = {}

    def is_committed(self, chunk: str) -> bool:
        """Whether ``chunk`` was committed within the window."""
        return chunk in self.committed

    def begin(self, chunk: str) -> None:
        """``chunk`` is on its way to the buffers."""
        self.in_flight[chunk] = []

    def wait_for(self, chunk: str, ack: Callable[[], None]) -> bool:
        """If ``chunk`` is in flight, call ``ack`` after its commit too and return True."""
        waiting = self.in_flight.get(chunk)
        if waiting is None:
            return False
        waiting.append(ack)
        return True

    def done(self, chunk: str, now: float) -> list[Callable[[], None]]:
        """``chunk`` is committed: remember it; return the acks of resends that waited for it."""
        self.committed[chunk] = now
        self.committed.move_to_end(chunk)
        return self.in_flight.pop(chunk, [])

    def abandon(self, chunk: str) -> None:
        """``chunk`` will not be committed (its emit was cancelled at shutdown)."""
        self.in_flight.pop(chunk, None)

    def expire(self, now: float) -> int:
        """Forget ids older than the window or beyond its size; return how many."""
        gone = 0
        cutoff = now - self.seconds
        while self.committed and (len(self.committed) > self.limit or next(iter(self.committed.values())) < cutoff):
            self.committed.popitem(last=False)
            gone += 1
        return gone
