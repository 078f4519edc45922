"""Which chunk ids are committed: a resent chunk is acknowledged again, never stored twice.

A committed chunk id is saved in the position store (``positions.json``), as an entry
``(source, "chunk:<id>")`` whose ``offset`` is the Unix time of its commit. That store is
replaced atomically by the very commit that makes the chunk's records durable, so after
a kill -9 either both the records and the id are there, or neither is (the buffers roll
back frames of a commit whose positions never reached the disk): the client's resend is
then acknowledged without storing, or stored once.

The window is bounded by age (``chunk_window`` seconds) and count (``chunk_window_max``):
out_forward resends within ``ack_response_timeout`` (190 s by default), fluent-logger-golang
at once on reconnect. Entries past the window are dropped from memory and so from the
next commit's save. A resend that arrives while the first copy is still on its way to
the buffers waits for that copy's commit and is acknowledged with it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from pipeline.sources.tail.checkpoint import FilePosition, PositionStore

PREFIX = "chunk:"


class ChunkWindow:
    """Committed and in-flight chunk ids of one source."""

    def __init__(self, source: str, positions: PositionStore, seconds: float, limit: int) -> None:
        self.source = source
        self.positions = positions
        self.seconds = seconds
        self.limit = limit
        # Oldest first: the order entries expire in.
        self.committed: OrderedDict[str, int] = OrderedDict(sorted(
            ((p.key, p.offset) for p in positions.for_source(source) if p.key.startswith(PREFIX)),
            key=lambda item: item[1],
        ))
        self.in_flight: dict[str, list[Callable[[], None]]] = {}

    def position(self, chunk: str, now: float) -> FilePosition:
        """The entry a batch carries so its commit saves ``chunk`` as committed."""
        return FilePosition(self.source, PREFIX + chunk, "forward-chunk", int(now), "", 0)

    def is_committed(self, chunk: str) -> bool:
        """Whether ``chunk`` was committed within the window."""
        return PREFIX + chunk in self.committed

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
        self.committed[PREFIX + chunk] = int(now)
        self.committed.move_to_end(PREFIX + chunk)
        return self.in_flight.pop(chunk, [])

    def abandon(self, chunk: str) -> None:
        """``chunk`` will not be committed (shutdown before its commit)."""
        self.in_flight.pop(chunk, None)

    def expire(self, now: float) -> int:
        """Forget ids older than the window or beyond its size; return how many."""
        gone: list[str] = []
        cutoff = now - self.seconds
        while self.committed and (len(self.committed) > self.limit or next(iter(self.committed.values())) < cutoff):
            key, _ = self.committed.popitem(last=False)
            gone.append(key)
        if gone:
            self.positions.drop(self.source, gone)
        return len(gone)
