#!/usr/bin/env python3
"""Steady state: a writer at a fixed rate, end-to-end latency and daemon CPU.

  .venv/bin/python benchmarks/steady.py                          # 1,000 and 10,000 records/s, 20 s each
  .venv/bin/python benchmarks/steady.py --rates 1000 --seconds 60 --flush-interval 5

For each rate: a fresh daemon (tail → file output, buffer flush_interval 1.0 s, other keys at
their defaults) follows an empty file; a writer process appends generated records (--max-chars
2000) one write() each at the given rate, every record carrying its write time ("written_at",
time.time(), also its event time); a reader thread polls the output files every 10 ms and
takes, for each record, arrival time minus written_at. Reports p50/p99/max latency, the
daemon's CPU over the writing window (CPU seconds / wall, % of one core), and the targets:
p99 < flush_interval + 0.5 s, and under 10% of one core at 1,000 records/s.

Prints a table and writes benchmarks/results/steady.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import (
    DaemonProcess,
    LineFactory,
    OutputReader,
    cpu_seconds,
    machine,
    peak_rss,
    percentile,
    print_header,
    print_table,
    verdict,
    write_results,
)

from tests.support.daemon import Layout

LATENCY_SLACK = 0.5  # the target: p99 < flush_interval + this
CPU_TARGET = 10.0  # % of one core, at TARGET_RATE
TARGET_RATE = 1000


def write_at_rate(path: Path, rate: int, seconds: float, max_chars: int, conn: Connection) -> None:
    """In a child process: generate the record pool, say ready, wait for go, write, report."""
    factory = LineFactory(max_chars)
    total = int(rate * seconds)
    conn.send("ready")
    conn.recv()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    start = time.perf_counter()
    written = nbytes = 0
    while written < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while written < due:  # one write() per record, as an agent's logger does
            nbytes += os.write(fd, factory.line(written))
            written += 1
        pause = written / rate - (time.perf_counter() - start)
        if pause > 0:
            time.sleep(pause)
    elapsed = time.perf_counter() - start
    os.close(fd)
    conn.send((written, nbytes, elapsed))


def run_rate(root: Path, rate: int, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh daemon, one writer at ``rate``: latencies and CPU."""
    shutil.rmtree(root, ignore_errors=True)
    layout = Layout(root)
    log = layout.logs / "agent.log"
    log.touch()
    config = layout.write_config(buffer={"flush_interval": args.flush_interval, "retry_wait": 1.0},
                                 source={"rescan_interval": 5.0, "rotate_wait": 5.0},
                                 parse_workers=args.parse_workers)
    ours, theirs = multiprocessing.Pipe()
    writer = multiprocessing.get_context("fork").Process(
        target=write_at_rate, args=(log, rate, args.seconds, args.max_chars, theirs), daemon=True)
    writer.start()
    assert ours.recv() == "ready"
    reader = OutputReader(layout.out, args.poll)
    with DaemonProcess(config, root / "daemon.log") as daemon:
        reader.start()
        time.sleep(1.0)  # settle after start
        cpu0, wall0 = cpu_seconds(daemon.pid), time.perf_counter()
        ours.send("go")
        written, nbytes, writing = ours.recv()
        cpu1, wall1 = cpu_seconds(daemon.pid), time.perf_counter()
        deadline = time.monotonic() + 3 * args.flush_interval + 30
        while len(reader.ids) < written and time.monotonic() < deadline:
            time.sleep(0.05)
        reader.stopping.set()
        reader.join()
        rss = peak_rss(daemon.pid)
    writer.join(10)
    lat = sorted(reader.latencies)
    cpu_pct = 100 * (cpu1 - cpu0) / (wall1 - wall0)
    p99 = percentile(lat, 99)
    return {
        "rate": rate, "written": written, "bytes": nbytes, "write_seconds": writing,
        "achieved_rate": written / writing, "delivered": len(reader.ids), "duplicates": reader.duplicates,
        "latency_s": {"p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": p99,
                      "max": lat[-1] if lat else float("nan"), "min": lat[0] if lat else float("nan")},
        "cpu_s": cpu1 - cpu0, "window_s": wall1 - wall0, "cpu_pct_of_core": cpu_pct, "peak_rss_mb": rss / 1e6,
        "latency_target_s": args.flush_interval + LATENCY_SLACK,
        "latency_pass": p99 < args.flush_interval + LATENCY_SLACK and len(reader.ids) == written,
        "cpu_pass": cpu_pct < CPU_TARGET if rate == TARGET_RATE else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1000,10000", help="records/s, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="writing time per rate")
    ap.add_argument("--flush-interval", type=float, default=1.0)
    ap.add_argument("--max-chars", type=int, default=2000)
    ap.add_argument("--poll", type=float, default=0.01, help="output reader's poll interval, seconds")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--parse-workers", type=int, default=0, help="the daemon's parse_workers (their CPU counts)")
    args = ap.parse_args()
    info = machine()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-steady-"))
    runs = [run_rate(base / f"rate-{rate}", int(rate), args) for rate in args.rates.split(",")]
    shutil.rmtree(base, ignore_errors=True)
    print_header(f"steady: writer at a fixed rate → tail → file output (flush_interval {args.flush_interval} s), "
                 f"{args.seconds:.0f} s per rate, records up to {args.max_chars} chars, "
                 f"parse_workers {args.parse_workers}", info)
    rows = []
    for r in runs:
        lat = r["latency_s"]
        rows.append([f"{r['rate']:,}/s", f"{r['achieved_rate']:,.0f}/s", f"{r['delivered']:,}/{r['written']:,}",
                     f"{lat['p50']:.3f}", f"{lat['p99']:.3f}", f"{lat['max']:.3f}", f"{r['cpu_pct_of_core']:.1f}%",
                     f"{r['peak_rss_mb']:.0f} MB",
                     f"{verdict(r['latency_pass'])} (<{r['latency_target_s']:.1f} s)",
                     "-" if r["cpu_pass"] is None else f"{verdict(r['cpu_pass'])} (<{CPU_TARGET:.0f}%)"])
    print_table(["rate", "achieved", "delivered", "p50 s", "p99 s", "max s", "CPU", "peak RSS", "p99 target",
                 "CPU target"], rows)
    write_results("steady", {**info, "flush_interval": args.flush_interval, "max_chars": args.max_chars,
                             "seconds": args.seconds, "poll": args.poll, "runs": runs})


if __name__ == "__main__":
    main()
