"""A parse worker process: the per-record work of plain blocks, on a core the event loop does not use.

Started by :class:`pipeline.runtime.parse_pool.ParsePool` as ``python -m pipeline.runtime.parse_worker
CONN_FD MEMORY_FD``. Blocks and results travel through the shared memory (a ``memfd`` both map); only
slot numbers, lengths and the few bad lines cross the socket. The worker keeps no state between
blocks and writes nothing to disk: positions, frames and commits stay with the daemon, so a worker
that dies loses nothing (the daemon parses that block itself, or stops).

Messages (pickled, over the socket):
  daemon → worker  ``Setup``, then ``Job`` per block, then ``None`` (or EOF) to exit;
  worker → daemon  ``Done`` per job, in the order the jobs came.
"""

from __future__ import annotations

import mmap
import sys
import zlib
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pipeline.runtime.memory import tune_malloc
from pipeline.transforms.lines import parse_lines

OFFSET_BYTES = array("q").itemsize


@dataclass(frozen=True, slots=True)
class Setup:
    """What every job of this worker shares: the memory's layout and the enrichment's constants."""

    slot_bytes: int  # each slot: the block (in_bytes) then the results (the rest)
    in_bytes: int
    keys: frozenset[str]
    time_key: str
    widths: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Job:
    """One block in slot ``slot``: ``length`` bytes read at offset ``base``, enriched with ``added``."""

    slot: int
    length: int
    base: int
    suffix: bytes
    added: dict[str, Any]
    now: float


@dataclass(frozen=True, slots=True)
class Done:
    """A job's outcome.

    ``kind``: "ok" (``payload`` bytes of records then ``count`` offsets are in the slot's result area,
    every width's records in the one window ``windows[width]``); "inline" (the daemon must parse the
    block itself: its records span windows or do not fit the area); "error" (``reason`` says why).
    """

    kind: str
    slot: int
    payload: int = 0
    count: int = 0
    windows: tuple[int, ...] = ()
    crc: int = 0  # of the records' bytes: the committer combines it into the frame's, not computing it again
    bad: tuple[tuple[int, bytes, str], ...] = ()
    reason: str = ""


def run_job(memory: mmap.mmap, setup: Setup, job: Job) -> Done:
    """Parse ``job``'s block from the shared memory and write its records and offsets back there."""
    start = job.slot * setup.slot_bytes
    parsed = parse_lines(memory, job.base, job.suffix, job.added, setup.keys, setup.time_key, job.now,
                         begin=start, stop=start + job.length)
    windows = _single_windows(parsed.times, setup.widths)
    if windows is None:
        return Done("inline", job.slot)
    payload = b"".join(parsed.lines)
    offsets = array("q", parsed.offsets).tobytes()
    out, room = start + setup.in_bytes, setup.slot_bytes - setup.in_bytes
    if len(payload) + len(offsets) > room:
        return Done("inline", job.slot)
    memory[out : out + len(payload)] = payload
    memory[out + len(payload) : out + len(payload) + len(offsets)] = offsets
    return Done("ok", job.slot, len(payload), len(parsed.offsets), windows, zlib.crc32(payload), tuple(parsed.bad))


def _single_windows(times: list[float], widths: tuple[int, ...]) -> tuple[int, ...] | None:
    """Each width's one window holding every time, or None when any width needs more than one."""
    if not times:
        return tuple(0 for _ in widths)
    low, high = min(times), max(times)
    windows = []
    for width in widths:
        first = int(low) // width * width
        if int(high) >= first + width:
            return None
        windows.append(first)
    return tuple(windows)


def serve(conn: Connection, memory: mmap.mmap) -> None:
    """Answer jobs until the daemon says stop or goes away."""
    setup: Setup = conn.recv()
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the daemon exited (or was killed): nothing here to keep
            return
        if job is None:
            return
        try:
            done = run_job(memory, setup, job)
        except Exception as exc:  # noqa: BLE001 - reported to the daemon, which parses the block itself
            done = Done("error", job.slot, reason=f"{type(exc).__name__}: {exc}")
        conn.send(done)


def main(argv: list[str]) -> None:
    """Entry point: ``CONN_FD MEMORY_FD MEMORY_BYTES``."""
    conn_fd, memory_fd, size = (int(a) for a in argv)
    tune_malloc()  # as the daemon: each block's results reuse the heap instead of fresh mappings
    with mmap.mmap(memory_fd, size) as memory:
        serve(Connection(conn_fd), memory)


if __name__ == "__main__":
    # Run as the module's own name, so what it pickles names pipeline.runtime.parse_worker, not __main__.
    from pipeline.runtime import parse_worker

    parse_worker.main(sys.argv[1:])
