#!/usr/bin/env python3
"""Idle: 100 followed files, nothing written; what the daemon costs while it waits.

  .venv/bin/python benchmarks/idle.py                  # 100 files, 60 s window
  .venv/bin/python benchmarks/idle.py --files 1000 --seconds 120 --flush-interval 5

A directory of --files .log files, each holding a few records, followed through one glob
(tail → file output, flush_interval 1.0 s, the status endpoint on, other keys at their
defaults). Once every record is delivered and the daemon has settled, nothing is written for
--seconds: the daemon's CPU over that window (% of one core; target < 0.5%) and its wakeups,
counted as voluntary context switches summed over its threads (/proc/PID/task/*/status).

Prints a table and writes benchmarks/results/idle-FILES.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    DaemonProcess,
    LineFactory,
    context_switches,
    count_lines,
    cpu_seconds,
    delivered_all,
    machine,
    open_fds,
    peak_rss,
    print_header,
    print_table,
    thread_switches,
    verdict,
    write_results,
)

from tests.support.daemon import Layout, wait_for

CPU_TARGET = 0.5  # % of one core


def sample(pid: int) -> dict[str, float]:
    voluntary, involuntary, threads = context_switches(pid)
    return {"cpu_s": cpu_seconds(pid), "wall": time.perf_counter(), "voluntary": voluntary,
            "involuntary": involuntary, "threads": threads}


def run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    layout = Layout(root)
    factory = LineFactory(max_chars=500, pool=50)
    sizes: dict[str, int] = {}
    for n in range(args.files):
        path = layout.logs / f"agent-{n:04d}.log"
        path.write_bytes(b"".join(factory.line(n * args.lines + i) for i in range(args.lines)))
        sizes[str(path)] = path.stat().st_size
    config = layout.write_config(buffer={"flush_interval": args.flush_interval, "retry_wait": 1.0},
                                 source={"rescan_interval": 5.0, "rotate_wait": 5.0},
                                 parse_workers=args.parse_workers)
    with DaemonProcess(config, root / "daemon.log") as daemon:
        daemon_pid = daemon.pid
        wait_for(lambda: delivered_all(layout.state, "debug", sizes), timeout=120, interval=0.1,
                 what="the files' records delivered")
        time.sleep(args.settle)
        before, threads0 = sample(daemon.pid), thread_switches(daemon.pid)
        per_second: list[float] = []
        last = before
        while time.perf_counter() - before["wall"] < args.seconds:
            time.sleep(max(0.01, min(1.0, args.seconds - (time.perf_counter() - before["wall"]))))
            now = sample(daemon.pid)
            per_second.append(now["voluntary"] - last["voluntary"])
            last = now
        after, threads1 = sample(daemon.pid), thread_switches(daemon.pid)
        fds, rss = open_fds(daemon.pid), peak_rss(daemon.pid)
    delivered = count_lines(layout.out)
    wall = after["wall"] - before["wall"]
    cpu_pct = 100 * (after["cpu_s"] - before["cpu_s"]) / wall
    wakeups = after["voluntary"] - before["voluntary"]
    by_thread = {f"{'main' if tid == daemon_pid else name}-{tid}": (count - threads0.get(tid, (name, 0))[1]) / wall
                 for tid, (name, count) in threads1.items()}
    return {
        "files": args.files, "records": args.files * args.lines, "delivered": delivered, "window_s": wall,
        "cpu_s": after["cpu_s"] - before["cpu_s"], "cpu_pct_of_core": cpu_pct,
        "voluntary_switches": wakeups, "wakeups_per_s": wakeups / wall,
        "involuntary_switches": after["involuntary"] - before["involuntary"],
        "max_wakeups_in_a_second": max(per_second, default=0), "wakeups_per_s_by_thread": by_thread,
        "wakeups_each_second": per_second, "threads": after["threads"], "open_fds": fds,
        "peak_rss_mb": rss / 1e6, "cpu_pass": cpu_pct < CPU_TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--lines", type=int, default=3, help="records already in each file")
    ap.add_argument("--seconds", type=float, default=60.0, help="the idle window")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after delivery before the window")
    ap.add_argument("--flush-interval", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--parse-workers", type=int, default=0, help="the daemon's parse_workers (their CPU counts)")
    args = ap.parse_args()
    info = machine()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-idle-"))
    result = run(root, args)
    shutil.rmtree(root, ignore_errors=True)
    assert result["delivered"] == result["records"], f"delivered {result['delivered']} of {result['records']}"
    print_header(f"idle: {args.files} followed files, nothing written for {args.seconds:.0f} s "
                 f"(flush_interval {args.flush_interval} s, parse_workers {args.parse_workers})", info)
    r = result
    print_table(["files", "window", "CPU-s", "CPU", "wakeups/s", "max/s", "threads", "fds", "peak RSS", "target"],
                [[r["files"], f"{r['window_s']:.0f} s", f"{r['cpu_s']:.2f}", f"{r['cpu_pct_of_core']:.2f}%",
                  f"{r['wakeups_per_s']:.1f}", r["max_wakeups_in_a_second"], r["threads"], r["open_fds"],
                  f"{r['peak_rss_mb']:.0f} MB", f"{verdict(r['cpu_pass'])} (<{CPU_TARGET}%)"]])
    busiest = sorted(r["wakeups_per_s_by_thread"].items(), key=lambda kv: -kv[1])
    print("  wakeups/s by thread: " + ", ".join(f"{name} {rate:.1f}" for name, rate in busiest))
    write_results(f"idle-{args.files}", {**info, "flush_interval": args.flush_interval, **result})


if __name__ == "__main__":
    main()
