"""A parse worker process: the per-record work of plain blocks, on a core the event loop does not use.

Started by :class:`pipeline.runtime.parse_pool.ParsePool` as ``python -m pipeline.runtime.parse_worker
CONN_FD MEMORY_FD MEMORY_BYTES``. Blocks and results travel through the shared memory (a ``memfd`` both
map); only slot numbers, lengths and the few bad lines cross the socket. The worker keeps no state
between blocks and writes nothing to disk: positions, frames and commits stay with the daemon, so a
worker that dies loses nothing (the daemon parses its blocks itself).

Every worker costs its own interpreter, so it imports only what the hot loop needs (orjson,
:mod:`pipeline.transforms.lines`): not multiprocessing (its socket end is a :class:`Channel`), not
ctypes (glibc's malloc settings come from the environment the pool starts it with). That is
~2.4 MB less resident per worker and 25 ms of imports instead of 35; ``tests/unit/test_parse_worker.py``
checks which modules a worker loads. A setup that brings transforms loads their modules as it is
unpickled (a redact transform: Hyperscan and its engine, ~6.4 MB more resident, but not pydantic nor
the config models, which would be ~13 MB more).

Messages (pickled, over the socket):
  daemon → worker  ``Setup``, then ``Job`` per block, then ``None`` (or EOF) to exit;
  worker → daemon  ``Done`` per job, in the order the jobs came.
"""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import signal
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.transforms.lines import ParsedLines, ParsedRecords, parse_lines

if TYPE_CHECKING:  # a worker loads the transforms' modules only when its setup brings a plan
    from pipeline.transforms.base import Records
    from pipeline.transforms.plan import TransformPlan


@dataclass(frozen=True, slots=True)
class Setup:
    """What every job of this worker shares: the memory's layout, the enrichment's constants and the
    transforms (``plan``: None when no source has any; its transforms are built when it is unpickled)."""

    slot_bytes: int  # each slot: the block (in_bytes) then the results (the rest)
    in_bytes: int
    keys: frozenset[str]
    time_key: str
    widths: tuple[int, ...]
    plan: TransformPlan | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """One block in slot ``slot``: ``length`` bytes read at offset ``base``, enriched with ``added``."""

    slot: int
    length: int
    base: int
    suffix: bytes
    added: dict[str, Any]
    now: float
    route: str | None = None  # the block's source, when the plan routes it through transforms
    packed: bool = False  # msgpack [time, record] entries (forward's PackedForward), not lines


@dataclass(frozen=True, slots=True)
class Region:
    """Records of one time window in a slot's result area: ``payload`` bytes at ``start``, then ``count``
    offsets (8 bytes each); ``crc`` is the payload's CRC-32, which the committer combines into the frame's."""

    start: int
    payload: int
    count: int
    crc: int


@dataclass(frozen=True, slots=True)
class Done:
    """A job's outcome.

    ``kind``: "ok" (``groups`` gives each (width, window) its region: when every record of the block
    falls in one window of every width, they all share one region; ``outputs`` gives each routed output
    its variant's (window, region) pairs, ``tallies`` the transforms' counters); "inline" (the daemon
    must parse the block itself: the results do not fit the area); "error" (``reason`` says why).
    """

    kind: str
    slot: int
    count: int = 0
    regions: tuple[Region, ...] = ()
    groups: tuple[tuple[int, int, int], ...] = ()  # (width, window, index into regions)
    bad: tuple[tuple[int, bytes, str], ...] = ()
    reason: str = ""
    outputs: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()  # (output, ((window, region), ...))
    tallies: dict[str, Any] | None = None


class ResultArea:
    """Writes regions one after another into a slot's result area; ``full`` once one did not fit."""

    def __init__(self, memory: mmap.mmap, start: int, size: int) -> None:
        self.memory, self.start, self.end = memory, start, start + size
        self.at = start
        self.regions: list[Region] = []
        self.full = False

    def add(self, lines: list[bytes], offsets: list[int]) -> int:
        """Write one window's records and offsets; the region's index."""
        payload = sum(map(len, lines))
        packed = array("q", offsets).tobytes()
        if self.at + payload + len(packed) > self.end:
            self.full = True
            return -1
        # Each record straight into the slot: a joined copy first would be a block's size more at the peak.
        memory, at, crc, crc32 = self.memory, self.at, 0, zlib.crc32
        for line in lines:
            memory[at : at + len(line)] = line
            crc = crc32(line, crc)
            at += len(line)
        memory[at : at + len(packed)] = packed
        self.regions.append(Region(self.at - self.start, payload, len(offsets), crc))
        self.at = at + len(packed)
        return len(self.regions) - 1


def run_job(memory: mmap.mmap, setup: Setup, job: Job) -> Done:
    """Parse ``job``'s block in place in the shared memory, run its source's transforms, and write its
    records (and each variant), per window, back there."""
    plan = setup.plan
    route = plan.routes[job.route] if plan is not None and job.route is not None else None
    if plan is not None:
        plan.take_tallies()  # what a failed job counted: the daemon parses that block itself
    start = job.slot * setup.slot_bytes
    records: Records | None = None
    if job.packed:
        parsed, records = _unpacked(memory, setup, job, start, keep=route is not None)
    else:
        parsed = parse_lines(memory, job.base, job.suffix, job.added, setup.keys, setup.time_key, job.now,
                             begin=start, stop=start + job.length)
    area = ResultArea(memory, start + setup.in_bytes, setup.slot_bytes - setup.in_bytes)
    windows = Windows(area, parsed.times)
    lines, offsets = parsed.lines, parsed.offsets
    outputs: list[tuple[str, tuple[tuple[int, int], ...]]] = []
    tallies = None
    if plan is not None and route is not None:
        if records is None:
            records = ParsedRecords(memory, parsed, job.added, setup.keys)
        variants = plan.variants(route, lines, records)
        lines = variants.lines
        outputs = [(output, windows.write(variant, offsets, width))
                   for output, (width, _, variant) in variants.outputs.items()]
        tallies = plan.take_tallies()
    widths = setup.widths if route is None or route.plain else ()
    groups = [(width, window, index) for width in widths for window, index in windows.write(lines, offsets, width)]
    if area.full:
        return Done("inline", job.slot)
    return Done("ok", job.slot, len(offsets), tuple(area.regions), tuple(groups), tuple(parsed.bad),
                outputs=tuple(outputs), tallies=tallies)


def _unpacked(memory: mmap.mmap, setup: Setup, job: Job, start: int, keep: bool
              ) -> tuple[ParsedLines, list[dict[Any, Any]] | None]:
    """A packed block's maps enriched and serialised (the bad entries first among the bad), and the maps
    themselves when ``keep`` (for the transforms)."""
    # msgpack and ormsgpack load with the first packed block: a worker that only parses lines never needs them.
    from pipeline.transforms.packed import serialise_packed

    kept: list[dict[Any, Any]] | None = [] if keep else None
    return serialise_packed(memory[start : start + job.length], job.added, setup.time_key, job.now, kept), kept


class Windows:
    """Writes a block's records split by window into the result area, each list of lines once per width.

    A variant that a chain left unchanged is the very list it was given, so it shares the regions of
    the records it came from; when every record falls in one window of every width, all widths share
    one region per list.
    """

    def __init__(self, area: ResultArea, times: list[float]) -> None:
        self.area, self.times = area, times
        self.low, self.high = (min(times), max(times)) if times else (0.0, 0.0)
        self.written: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}  # (id(lines), width) → windows
        self.whole: dict[int, int] = {}  # id(lines) → its one region holding every record
        self.kept: list[list[bytes]] = []  # the lists named by id above, alive until the job ends

    def write(self, lines: list[bytes], offsets: list[int], width: int) -> tuple[tuple[int, int], ...]:
        """(window, region index) of each window of ``width`` the records fall in, in order of appearance."""
        if not lines:
            return ()
        done = self.written.get((id(lines), width))
        if done is not None:
            return done
        self.kept.append(lines)
        low, high = int(self.low) // width * width, int(self.high) // width * width
        if low == high:  # the common case: one window; int(t) // width is monotonic in t
            whole = self.whole.get(id(lines))
            if whole is None:
                whole = self.whole[id(lines)] = self.area.add(lines, offsets)
            done = ((low, whole),)
        else:
            done = tuple((window, self.area.add([lines[i] for i in picked], [offsets[i] for i in picked]))
                         for window, picked in _by_window(self.times, width).items())
        self.written[(id(lines), width)] = done
        return done


def _by_window(times: list[float], width: int) -> dict[int, list[int]]:
    """Record indices per window of ``width`` seconds, windows in order of first appearance (as on the loop)."""
    windows: dict[int, list[int]] = {}
    for index, t in enumerate(times):
        windows.setdefault(int(t) // width * width, []).append(index)
    return windows


class Channel:
    """The worker's end of the socket, framed as :class:`multiprocessing.connection.Connection` frames
    (the daemon's end): a 4-byte big-endian signed length (-1, then 8 bytes, beyond 2 GiB), then the
    pickle. Plain reads and writes on the descriptor: importing multiprocessing would cost each worker
    ~1.5 MB and ~15 ms."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, obj: object) -> None:
        """Pickle ``obj`` and write it whole; BrokenPipeError (a ConnectionError) once the daemon is gone."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        header = struct.pack("!i", len(data)) if len(data) <= 0x7FFFFFFF else struct.pack("!iQ", -1, len(data))
        view = memoryview(header + data)
        while view:
            view = view[os.write(self.fd, view):]

    def recv(self) -> Any:
        """The next object; EOFError when the daemon closed its end (or exited)."""
        (size,) = struct.unpack("!i", self._exactly(4))
        if size == -1:
            (size,) = struct.unpack("!Q", self._exactly(8))
        return pickle.loads(self._exactly(size))

    def _exactly(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:
            chunk = os.read(self.fd, size)
            if not chunk:
                raise EOFError("the daemon closed the socket")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def serve(conn: Channel, memory: mmap.mmap) -> None:
    """Answer jobs until the daemon says stop or goes away."""
    setup: Setup = conn.recv()
    # A job's maps and lines hold no cycles, and reference counting frees them at its end; the collector's
    # passes during a job only walked them (and, from time to time, the whole heap): a PackedForward job
    # took 4.1-4.5 ms of CPU per 1,000 records without them, 4.8-5.4 ms with (docs/PERFORMANCE.md §4).
    # It runs between jobs, so garbage a job did leave is still found.
    gc.freeze()
    while True:
        try:
            job = conn.recv()
        except (EOFError, ConnectionError):  # the daemon exited (or was killed): nothing here to keep
            return
        if job is None:
            return
        gc.disable()
        try:
            done = run_job(memory, setup, job)
        except Exception as exc:  # noqa: BLE001 - reported to the daemon, which parses the block itself
            done = Done("error", job.slot, reason=f"{type(exc).__name__}: {exc}")
        finally:
            gc.enable()
        try:
            conn.send(done)
        except ConnectionError:  # the daemon is gone: so is the reason for this job
            return


def main(argv: list[str]) -> None:
    """Entry point: ``CONN_FD MEMORY_FD MEMORY_BYTES``."""
    # systemd's stop signals the whole control group, a terminal's Ctrl-C the whole process group: the
    # daemon stops in order and tells its workers when; they leave at that word or at EOF, never mid-job.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    conn_fd, memory_fd, size = (int(a) for a in argv)
    with mmap.mmap(memory_fd, size) as memory:
        serve(Channel(conn_fd), memory)


if __name__ == "__main__":
    # Run as the module's own name, so what it pickles names pipeline.runtime.parse_worker, not __main__.
    from pipeline.runtime import parse_worker

    parse_worker.main(sys.argv[1:])
