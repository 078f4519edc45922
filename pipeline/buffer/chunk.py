"""A chunk: one file of frames for one output and one time window.

The committer appends frames to a staged chunk from a worker thread (``write`` /
``sync``); everything else about a chunk (its state, size accounting, renames) is
changed on the event loop. See :mod:`pipeline.buffer` for the state machine.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pipeline.buffer import frame
from pipeline.buffer.drops import RecordDrops, apply
from pipeline.buffer.frame import Frame
from pipeline.durability import open_file, sync, write_all


class ChunkState(Enum):
    """Where a chunk is in its life; also its file-name suffix."""

    STAGED = "staged"
    QUEUED = "queued"


def new_chunk_id() -> str:
    """A random id, fixed for the chunk's whole life (outputs build idempotent names from it)."""
    return secrets.token_hex(8)


@dataclass(eq=False)
class Chunk:
    """One chunk file: ``<timekey>.<chunk_id>.<state>`` in its output's buffer directory."""

    directory: Path
    timekey: int
    chunk_id: str
    state: ChunkState
    size: int = 0  # bytes on disk once pending writes land
    records: int = 0
    created_mono: float = 0.0
    drops: RecordDrops | None = field(default=None, repr=False)  # records a source decided not to deliver
    # Batches in it whose source has not yet confirmed them (a Kafka partition's offset not yet in its group):
    # the chunk is not queued for delivery until none is left (see LineBatch.confirm). In memory only.
    holds: int = 0
    _fd: int | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        """Current file path (changes with state)."""
        return self.directory / f"{self.timekey}.{self.chunk_id}.{self.state.value}"

    @property
    def name(self) -> str:
        """A short name for logs: ``<timekey>.<chunk_id>``."""
        return f"{self.timekey}.{self.chunk_id}"

    @classmethod
    def parse_name(cls, path: Path) -> tuple[int, str, ChunkState] | None:
        """Split a chunk file name into (timekey, chunk_id, state); None if it is not one."""
        parts = path.name.split(".")
        if len(parts) != 3 or not parts[0].lstrip("-").isdigit():
            return None
        try:
            return int(parts[0]), parts[1], ChunkState(parts[2])
        except ValueError:
            return None

    # -- writing (committer's worker thread) -------------------------------------------

    def write(self, *pieces: bytes) -> None:
        """Append whole frames (their pieces, in order) to the file, creating it on first use."""
        if self._fd is None:
            self._fd = open_file(self.path, os.O_WRONLY | os.O_APPEND)
        write_all(self._fd, pieces)

    def sync(self) -> None:
        """Make every appended byte durable."""
        if self._fd is not None:
            sync(self._fd)

    def truncate(self, size: int) -> None:
        """Cut the file back to ``size`` bytes (undo a failed commit's frames before a retry)."""
        os.truncate(self.path, size)

    def close(self) -> None:
        """Release the write descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- state changes (event loop) ----------------------------------------------------

    def enqueue(self) -> None:
        """staged → queued: no more appends; a flusher may take it."""
        self.close()
        old = self.path
        self.state = ChunkState.QUEUED
        os.rename(old, self.path)

    def delete(self) -> None:
        """Ack: the chunk was delivered."""
        self.close()
        self.path.unlink(missing_ok=True)

    # -- reading (outputs) -------------------------------------------------------------

    def frames(self) -> Iterator[Frame]:
        """Yield the data frames, one at a time (never the whole chunk in memory), without the records
        a :class:`~pipeline.buffer.drops.DropRule` leaves out."""
        rules = self.drops.for_chunk(self.chunk_id) if self.drops is not None else None
        with self.path.open("rb") as handle:
            while (item := frame.decode_from(handle)) is not None:
                if item.kind != frame.KIND_DATA:
                    continue
                if rules is not None and (item := apply(rules, item)) is None:
                    continue
                yield item

    def leaves_out_records(self) -> bool:
        """Whether a :class:`~pipeline.buffer.drops.DropRule` covers this chunk (its payloads are then not
        its frames' bytes as stored: an output copying those must read ``frames`` instead)."""
        return self.drops is not None and self.drops.for_chunk(self.chunk_id) is not None

    def payloads(self) -> Iterator[bytes]:
        """Yield the records of each frame as one JSON Lines blob."""
        for item in self.frames():
            yield item.payload


@dataclass(eq=False)
class Hold:
    """One batch's hold on the chunks its frames went to (each one's ``holds``), made by the committer.

    Its source calls :meth:`release` on the event loop once it confirms the batch; ``seq`` (the commit that
    stored it) and ``chunk_ids`` let the source name those frames in a :class:`~pipeline.buffer.drops.DropRule`
    first, when it finds another owner delivers them.
    """

    chunks: list[Chunk]
    seq: int
    wake: Callable[[], None]  # the committer's: held chunks that are due go out at its next step
    released: bool = False

    @property
    def chunk_ids(self) -> tuple[str, ...]:
        """The ids of the chunks held."""
        return tuple(chunk.chunk_id for chunk in self.chunks)

    def release(self) -> None:
        """The source confirmed the batch (or decided what of it to leave out): its chunks may go."""
        if self.released:
            return
        self.released = True
        for chunk in self.chunks:
            chunk.holds -= 1
        self.wake()


def header_frame(chunk: Chunk, seq: int, output: str) -> bytes:
    """The first frame of every chunk file: who it belongs to, for operators and tools."""
    meta = {"chunk_id": chunk.chunk_id, "output": output, "timekey": chunk.timekey}
    return frame.encode(frame.KIND_HEADER, seq, 0, meta, b"")
