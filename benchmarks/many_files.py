#!/usr/bin/env python3
"""Many files: 1,000 files written slowly, round-robin; descriptors, memory, CPU, delivery.

  .venv/bin/python benchmarks/many_files.py                    # 1,000 files, 10 rounds over ~30 s
  .venv/bin/python benchmarks/many_files.py --files 2000 --rounds 20 --seconds 60 --max-open-files 256

The daemon (tail → file output, flush_interval 1.0 s, max_open_files at its default unless
--max-open-files) follows one glob over an empty directory; then every round appends one
generated record (--max-chars 1000) to each file in turn (open, append, close; the first
round creates the files), a round every --seconds / --rounds. Samples the daemon's open
descriptors (/proc/PID/fd) every 50 ms; reports CPU over the run (first write until all
delivered), peak descriptors, peak RSS, end-to-end latency of the records (output arrival
minus written_at), and checks that every record arrived exactly once.

Prints a table and writes benchmarks/results/many_files-FILES.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    DaemonProcess,
    LineFactory,
    OutputReader,
    cpu_seconds,
    machine,
    open_fds,
    peak_rss,
    percentile,
    print_header,
    print_table,
    verdict,
    write_results,
)

from tests.support.daemon import Layout

RSS_TARGET_MB = 150


class FdSampler(threading.Thread):
    """Peak descriptors of a process, sampled every ``interval``."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.peak = max(self.peak, open_fds(self.pid))
                self.samples += 1
            except OSError:
                return
            self.stopping.wait(self.interval)


def nofile_limit(pid: int) -> str:
    """The process's soft limit on open files."""
    found = re.search(r"^Max open files\s+(\S+)", Path(f"/proc/{pid}/limits").read_text(), re.M)
    return found.group(1) if found else "?"


def write_round(logs: Path, files: int, round_: int, factory: LineFactory) -> None:
    for n in range(files):
        with (logs / f"agent-{n:04d}.log").open("ab") as out:
            out.write(factory.line(round_ * files + n))


def run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    layout = Layout(root)
    source: dict[str, Any] = {"rescan_interval": 5.0, "rotate_wait": 5.0}
    if args.max_open_files:
        source["max_open_files"] = args.max_open_files
    config = layout.write_config(buffer={"flush_interval": args.flush_interval, "retry_wait": 1.0}, source=source)
    factory = LineFactory(args.max_chars)
    expected = args.files * args.rounds
    reader = OutputReader(layout.out, 0.05)
    lags: list[float] = []
    with DaemonProcess(config, root / "daemon.log") as daemon:
        baseline = open_fds(daemon.pid)
        limit = nofile_limit(daemon.pid)
        sampler = FdSampler(daemon.pid)
        sampler.start()
        reader.start()
        time.sleep(0.5)
        cpu0, start = cpu_seconds(daemon.pid), time.perf_counter()
        every = args.seconds / args.rounds
        for round_ in range(args.rounds):
            time.sleep(max(0.0, start + round_ * every - time.perf_counter()))
            write_round(layout.logs, args.files, round_, factory)
            lags.append(time.perf_counter() - start - round_ * every)  # how long writing the round took
        written = time.perf_counter()
        deadline = time.monotonic() + 120
        while len(reader.ids) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        done = time.perf_counter()
        cpu1 = cpu_seconds(daemon.pid)
        sampler.stopping.set()
        sampler.join()
        reader.stopping.set()
        reader.join()
        rss = peak_rss(daemon.pid)
        exit_code = daemon.stop()
    lat = sorted(reader.latencies)
    return {
        "files": args.files, "rounds": args.rounds, "records": expected, "delivered": len(reader.ids),
        "duplicates": reader.duplicates, "exactly_once": len(reader.ids) == expected and not reader.duplicates,
        "max_open_files": args.max_open_files or "default", "nofile_limit": limit,
        "run_s": done - start, "drain_after_last_write_s": done - written,
        "round_write_s_max": max(lags), "cpu_s": cpu1 - cpu0, "cpu_pct_of_core": 100 * (cpu1 - cpu0) / (done - start),
        "fds_baseline": baseline, "fds_peak": sampler.peak, "fd_samples": sampler.samples,
        "peak_rss_mb": rss / 1e6, "rss_pass": rss / 1e6 < RSS_TARGET_MB, "exit_code": exit_code,
        "latency_s": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": lat[-1] if lat else None},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=30.0, help="spread the rounds over this long")
    ap.add_argument("--max-chars", type=int, default=1000)
    ap.add_argument("--max-open-files", type=int, default=0, help="0: the daemon's default")
    ap.add_argument("--flush-interval", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    info = machine()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-many-"))
    r = run(root, args)
    shutil.rmtree(root, ignore_errors=True)
    print_header(f"many files: {args.files} files, {args.rounds} rounds of one record each over ~{args.seconds:.0f} s "
                 f"(max_open_files {r['max_open_files']}, RLIMIT_NOFILE {r['nofile_limit']})", info)
    lat = r["latency_s"]
    print_table(["files", "records", "delivered", "CPU-s", "CPU", "fds base", "fds peak", "peak RSS", "p50 s",
                 "p99 s", "drain s", "exactly once"],
                [[r["files"], f"{r['records']:,}", f"{r['delivered']:,}", f"{r['cpu_s']:.2f}",
                  f"{r['cpu_pct_of_core']:.1f}%", r["fds_baseline"], r["fds_peak"], f"{r['peak_rss_mb']:.0f} MB",
                  f"{lat['p50']:.2f}", f"{lat['p99']:.2f}", f"{r['drain_after_last_write_s']:.2f}",
                  verdict(r["exactly_once"])]])
    write_results(f"many_files-{args.files}",
                  {**info, "flush_interval": args.flush_interval, "max_chars": args.max_chars, **r})


if __name__ == "__main__":
    main()
