"""What every source hands the pipeline: blocks of complete lines with their source range."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pipeline.buffer.chunk import Hold
from pipeline.buffer.drops import RecordDrops
from pipeline.clock import Clock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.tail.checkpoint import FilePosition, PositionStore


@dataclass(slots=True)
class LineBatch:
    """Complete lines read from one file, and the position to commit once they are durable.

    ``data`` holds whole lines, each ending in ``b"\\n"`` (possibly none: a batch may only
    move the position, e.g. past an oversized line, or ``forget`` a finished file).

    A source that is not a file may leave ``position`` None (nothing is saved for it) and
    pass ``on_commit`` instead: the committer calls it on the event loop once the commit
    holding this batch is durable (frames fsynced in every routed buffer, positions saved),
    which is where a network source acknowledges what it received. ``journal`` names
    state saved with the commit itself (see :class:`CommitJournal`).

    ``claim``, when set, is called on the event loop by the committer just before it stores
    the batch (after any wait for room in the buffers). False drops the batch: nothing of it
    is stored or dead-lettered, no position moves, and ``on_commit`` is never called (a
    Kafka partition revoked since its messages were read: its next owner reads them again).
    True promises the source that the commit under way stores it.

    ``confirm``, when set, is called on the event loop once the batch is stored, before ``on_commit``,
    with a :class:`~pipeline.buffer.chunk.Hold` on the chunks it went to: they are not delivered until
    the source calls ``hold.release()`` (a Kafka source: once the group has the batch's offset, so a
    member that takes the partition over never reads again what was already delivered here).

    ``offsets``, when set, gives each line's offset in its source (one per line, e.g. a
    Kafka message offset): records' ids and dead letters then use it instead of
    ``start`` + the line's byte position in ``data``.
    """

    source: str
    tag: str
    key: str
    path: str
    start: int
    end: int
    data: bytes
    position: FilePosition | None
    forget: bool = False
    dead: list[dict[str, Any]] = field(default_factory=list)
    on_commit: Callable[[], None] | None = None
    claim: Callable[[], bool] | None = None
    confirm: Callable[[Hold], None] | None = None
    offsets: list[int] | None = None
    journal: tuple[CommitJournal, object] | None = None
    # A source that decodes records itself (forward: msgpack) hands them over as dicts instead of
    # ``data``; their offsets are their indices in the batch. Set to None once processed.
    records: list[dict[Any, Any]] | None = None
    # ``data`` holds msgpack [time, record] entries (forward's PackedForward, as the client sent them) rather
    # than lines: framed and decoded where the records are processed (pipeline/transforms/packed.py), which
    # then sets ``end`` to the entries found (stored and dead-lettered).
    packed: bool = False
    dead_fields: dict[str, Any] | None = None  # added to each dead letter of the batch (forward: the peer)


class CommitJournal(Protocol):
    """A source's own state that must become durable in the same commit as its records.

    A batch carrying ``journal = (journal, item)`` has ``item`` handed to
    ``journal.write(seq, items, point)`` inside its commit's worker-thread step, after the
    frames are fsynced and before the positions (with the commit sequence number ``seq``) are
    saved. The journal must write and sync before it returns; at the next start it treats
    entries whose ``seq`` is above the commit point as never written (their frames are rolled
    back too), which makes the pair atomic. A forward source records its committed chunk ids
    this way (a Kafka source needs none: one position per partition).

    A commit that moves no position and writes one journal only saves no positions: it
    passes ``point = True``, and that write is the commit point. It must then be all or
    nothing after a crash, and the source type's entry in
    :data:`pipeline.registry.SOURCE_COMMIT_POINTS` must find its ``seq`` at the next start.
    """

    def write(self, seq: int, items: list[object], point: bool) -> None:
        """Append ``items`` for commit ``seq`` and sync them (worker thread); ``point``: see the class doc."""
        ...


Emit = Callable[[LineBatch], Awaitable[None]]


@dataclass(frozen=True)
class SourceContext:
    """What a source may use besides its own config."""

    positions: PositionStore  # committed positions, saved by the committer after each commit
    dead_letters: DeadLetterStore
    clock: Clock
    state_dir: Path  # the daemon's state directory, for a source's own state files
    time_key: str = "timestamp"  # [enrich] time_key: where a source that knows each record's event time puts it
    # Records a source decides at start not to deliver (see :class:`PreparingSource`), and the ids of the
    # chunks every buffer held at start (set aside ones included), which such a decision covers.
    drops: RecordDrops | None = None
    buffered_chunks: frozenset[str] = frozenset()


class Source(Protocol):
    """A source runs until ``stop`` is set, handing batches to ``emit`` (which may block)."""

    name: str

    async def run(self, emit: Emit) -> None:
        """Read and emit until stopped; return after the last emit."""
        ...

    def stop(self) -> None:
        """Ask ``run`` to finish soon."""
        ...


@runtime_checkable
class PreparingSource(Protocol):
    """A source with something to settle at start before any output delivers a chunk (the daemon awaits it).

    A Kafka source decides there which of its buffered records another member now delivers
    (:mod:`pipeline.sources.kafka.ownership`) and adds :class:`~pipeline.buffer.drops.DropRule` s for them.
    """

    async def prepare(self) -> None:
        """Settle it; a failure is logged, never raised (the daemon starts anyway)."""
        ...


@runtime_checkable
class ReportingSource(Protocol):
    """A source that reports its own state in status (network listeners, Kafka partitions).

    The tail source's files are reported by the observer itself, which reads their positions.
    """

    def status(self) -> dict[str, Any]:
        """Keys merged into this source's status entry.

        ``problem`` (a string, or None) makes the daemon unhealthy while it is set; the other keys
        are shown as they are (``network`` for a listener, ``partitions`` and ``lag`` for Kafka).
        """
        ...
