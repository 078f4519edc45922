#!/usr/bin/env python3
"""Read latency: how soon a written line is read, and how soon its position is committed.

  .venv/bin/python benchmarks/latency.py                       # 10, 1,000 and 10,000 lines/s, 10 s each
  .venv/bin/python benchmarks/latency.py --rates 1000 --seconds 30

For each rate, two phases, each with a writer process appending generated records
(--max-chars 1000) with one ``write()`` per line, paced to the rate, and noting each line's
end offset and ``time.monotonic()`` just before its write (CLOCK_MONOTONIC is the same
clock in every process):

* **write → read**: the tail source (``pipeline.sources.tail.source.TailSource``, the class
  the daemon runs, default settings) runs in this process on its own event loop; each read
  step is stamped through the source's ``on_read`` hook (the bytes are out of the file
  then: what copytruncate's window is about), and each batch it emits on arrival; a
  line's latency is the first stamp at or past the line's end. CPU: this process's CPU
  time over the writing window (the source, its worker threads and the stamping; the
  writer is another process).
* **write → commit**: a fresh daemon (tail → file output, defaults) follows the file; this
  process watches the state directory with inotify and reads ``positions.json`` at each
  replacement; a line's latency ends when the committed offset reaches its end (the
  records are then in the output's buffer, fsynced). CPU: the daemon's, over the window.

Reports p50/p99/max for both, the CPU of each, and the target: write → read p99 < 10 ms at
1,000 lines/s. Prints a table and writes benchmarks/results/latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import inotify_simple
import orjson
from common import (
    DaemonProcess,
    LineFactory,
    cpu_seconds,
    finish_run,
    machine,
    percentile,
    print_header,
    print_table,
    verdict,
)
from common import write_results as save

from pipeline.clock import SystemClock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.base import LineBatch, SourceContext
from pipeline.sources.tail.checkpoint import PositionStore
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.source import TailSource
from tests.support.daemon import Layout

TARGET_RATE = 1000
TARGET_P99_MS = 10.0
SETTLE = 1.5  # seconds after start before the writer starts


def write_at_rate(path: Path, rate: int, seconds: float, max_chars: int, conn: Connection) -> None:
    """In a child process: say ready, wait for go, write one line per write(), send (ends, times)."""
    factory = LineFactory(max_chars)
    total = max(1, int(rate * seconds))
    lines = [factory.line(n) for n in range(total)]
    # Opened before the measurement, as a long-running agent's log is: an open of a followed
    # file makes the tail source read at every write for a second (pacing.py: a copier?).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    conn.send("ready")
    conn.recv()
    ends: list[int] = []
    times: list[int] = []
    offset = os.fstat(fd).st_size
    start = time.monotonic()
    for n, line in enumerate(lines):
        pause = start + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        times.append(time.monotonic_ns())
        offset += os.write(fd, line)
        ends.append(offset)
    os.close(fd)
    conn.send((ends, times))


class Writer:
    """The writer process for one phase."""

    def __init__(self, path: Path, rate: int, args: argparse.Namespace) -> None:
        self.ours, theirs = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("fork").Process(
            target=write_at_rate, args=(path, rate, args.seconds, args.max_chars, theirs), daemon=True)
        self.process.start()
        assert self.ours.recv() == "ready"

    def go(self) -> None:
        self.ours.send("go")

    def result(self) -> tuple[list[int], list[int]]:
        ends, times = self.ours.recv()
        self.process.join(10)
        return ends, times


def latencies_ms(ends: list[int], times: list[int], seen: list[tuple[int, int]]) -> list[float]:
    """Per line: first time (ns) an observed offset reached its end, minus its write time; sorted."""
    seen.sort(key=lambda s: s[1])
    reach_offsets, reach_times = [], []
    best = -1
    for offset, at in seen:  # running maximum: the first moment each offset was covered
        if offset > best:
            best = offset
            reach_offsets.append(offset)
            reach_times.append(at)
    found = []
    for end, written in zip(ends, times, strict=True):
        i = bisect.bisect_left(reach_offsets, end)
        if i < len(reach_offsets):
            found.append((reach_times[i] - written) / 1e6)
    return sorted(found)


# --------------------------------------------------------------------------------------------
# write → read: the tail source in this process


async def follow(source: TailSource, reads: list[tuple[int, int]], emits: list[tuple[int, int]],
                 until_offset: list[int]) -> None:
    """Run the source, stamping every read and batch; stop once ``until_offset[0]`` is emitted."""

    async def emit(batch: LineBatch) -> None:
        emits.append((batch.end, time.monotonic_ns()))
        if until_offset[0] and batch.end >= until_offset[0]:
            source.stop()

    source.on_read = lambda _key, end: reads.append((end, time.monotonic_ns()))
    await source.run(emit)


def read_phase(root: Path, rate: int, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    (root / "logs").mkdir(parents=True)
    log = root / "logs" / "agent.log"
    log.touch()
    writer = Writer(log, rate, args)
    return asyncio.run(read_run(root, writer))


async def read_run(root: Path, writer: Writer) -> dict[str, Any]:
    config = TailSourceConfig(type="tail", paths=[str(root / "logs" / "*.log")], tag="bench")
    store = PositionStore(root / "positions.json")
    source = TailSource("bench", config, SourceContext(store, DeadLetterStore(root / "dead"), SystemClock(), root))
    reads: list[tuple[int, int]] = []
    seen: list[tuple[int, int]] = []
    until: list[int] = [0]
    task = asyncio.create_task(follow(source, reads, seen, until))
    await asyncio.sleep(SETTLE)  # the first look, the watches, the urgent second after opens
    cpu0, wall0 = time.process_time(), time.perf_counter()
    writer.go()
    ends, times = await asyncio.to_thread(writer.result)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    until[0] = ends[-1]
    if seen and seen[-1][0] >= ends[-1]:
        source.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), 10)
    except TimeoutError:
        source.stop()
        await task
    lat = latencies_ms(ends, times, reads)
    return {"lines": len(ends), "read": len(lat), "reads": len(reads), "batches": len(seen),
            "latency_ms": summary(lat), "emit_latency_ms": summary(latencies_ms(ends, times, seen)),
            "cpu_pct_of_core": 100 * (cpu1 - cpu0) / (wall1 - wall0)}


# --------------------------------------------------------------------------------------------
# write → commit: the daemon


class PositionWatcher(threading.Thread):
    """Reads positions.json at each replacement (inotify on the state directory); stamps offsets."""

    def __init__(self, state: Path, path: Path) -> None:
        super().__init__(daemon=True)
        self.state, self.path = state, str(path)
        self.seen: list[tuple[int, int]] = []
        self.stopping = threading.Event()
        self.inotify = inotify_simple.INotify()
        self.inotify.add_watch(state, inotify_simple.flags.MOVED_TO | inotify_simple.flags.CLOSE_WRITE)

    def run(self) -> None:
        while not self.stopping.is_set():
            events = self.inotify.read(timeout=100)
            if any(e.name == "positions.json" for e in events):
                self._read()
        self.inotify.close()

    def _read(self) -> None:
        now = time.monotonic_ns()
        try:
            files = orjson.loads((self.state / "positions.json").read_bytes())["files"]
        except (OSError, orjson.JSONDecodeError, KeyError):
            return
        for f in files:
            if f["path"] == self.path:
                self.seen.append((int(f["offset"]), now))


def commit_phase(root: Path, rate: int, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    layout = Layout(root)
    layout.state.mkdir(parents=True)
    log = layout.logs / "agent.log"
    log.touch()
    config = layout.write_config(source={"rescan_interval": 5.0, "rotate_wait": 5.0},
                                 buffer={"flush_interval": 1.0, "retry_wait": 1.0})
    writer = Writer(log, rate, args)
    watcher = PositionWatcher(layout.state, log)
    watcher.start()
    with DaemonProcess(config, root / "daemon.log") as daemon:
        time.sleep(SETTLE)
        cpu0, wall0 = cpu_seconds(daemon.pid), time.perf_counter()
        writer.go()
        ends, times = writer.result()
        cpu1, wall1 = cpu_seconds(daemon.pid), time.perf_counter()
        deadline = time.monotonic() + 10
        while not any(offset >= ends[-1] for offset, _ in watcher.seen[-5:]) and time.monotonic() < deadline:
            time.sleep(0.05)
    watcher.stopping.set()
    watcher.join()
    lat = latencies_ms(ends, times, watcher.seen)
    return {"lines": len(ends), "committed": len(lat), "commits": len(watcher.seen), "latency_ms": summary(lat),
            "cpu_pct_of_core": 100 * (cpu1 - cpu0) / (wall1 - wall0)}


# --------------------------------------------------------------------------------------------


def summary(lat: list[float]) -> dict[str, float]:
    nan = float("nan")
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": lat[-1] if lat else nan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10,1000,10000", help="lines/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="writing time per rate and phase")
    ap.add_argument("--max-chars", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    info = machine()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-latency-"))
    runs: list[dict[str, Any]] = []
    for rate in (int(r) for r in args.rates.split(",")):
        read = read_phase(base / f"read-{rate}", rate, args)
        commit = commit_phase(base / f"commit-{rate}", rate, args)
        runs.append({"rate": rate, "read": read, "commit": commit})
    shutil.rmtree(base, ignore_errors=True)
    finish_run(info)
    print_header(f"latency: write → read (tail source) and write → commit (daemon), {args.seconds:.0f} s per "
                 f"rate and phase, records up to {args.max_chars} chars", info)
    rows = []
    for r in runs:
        rd, cm = r["read"], r["commit"]
        target = "-"
        if r["rate"] == TARGET_RATE:
            target = f"{verdict(rd['latency_ms']['p99'] < TARGET_P99_MS)} (<{TARGET_P99_MS:.0f} ms)"
        rows.append([f"{r['rate']:,}/s", f"{rd['read']:,}/{rd['lines']:,}",
                     *(f"{rd['latency_ms'][k]:.2f}" for k in ("p50", "p99", "max")),
                     f"{rd['emit_latency_ms']['p99']:.1f}", f"{rd['cpu_pct_of_core']:.1f}%",
                     *(f"{cm['latency_ms'][k]:.1f}" for k in ("p50", "p99", "max")), f"{cm['cpu_pct_of_core']:.1f}%",
                     target])
    print_table(["rate", "read", "read p50 ms", "p99", "max", "emit p99", "source CPU", "commit p50 ms", "p99", "max",
                 "daemon CPU", "read p99 target"], rows)
    save("latency", {**info, "seconds": args.seconds, "max_chars": args.max_chars, "runs": runs})


if __name__ == "__main__":
    main()
