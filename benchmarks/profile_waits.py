#!/usr/bin/env python3
"""Wait profile of a backlog catch-up: per stage, busy time against idle and waiting time,
the event loop's blocked and idle time, GIL waits, and who waits for whom.

  .venv/bin/python benchmarks/profile_waits.py                       # 100,000 typical records, fsync = true
  .venv/bin/python benchmarks/profile_waits.py --fsync false
  .venv/bin/python benchmarks/profile_waits.py --switch-interval 0.005   # Python's default GIL interval
  .venv/bin/python benchmarks/profile_waits.py --yield-per-batch        # experiment, see waits_trace.py

The workload and the daemon's configuration are catchup.py's (tail → file output). The daemon
runs under ``waits_trace.py``, which wraps each stage's methods from the outside (pipeline/ is
unchanged; the wrappers cost about a microsecond per call, a few calls per 1 MiB block), and
this process samples every daemon thread's state from /proc every ``--interval`` seconds
(``waits_sampler.py``; from outside, so it takes no GIL from the daemon, only a little CPU
of its own). The window is catchup.py's: from "logferry running" until the positions reach
the end of the file and no chunk is left. Prints the tables and writes
benchmarks/results/profile_waits-<records>-<max_chars>-fsync-<mode>[-yield][-switch-<s>].json.

What to read first: "wall vs CPU" (the gap to explain), the event loop's row in the thread table
(the parser's thread: running, GIL wait, idle), and "who waits" (while the loop is idle, was the
processor blocked on the committer, and the committer on its fsync thread, or starved by the
source?). "waiting for a core" is run-queue time: on a loaded machine it is large and means
nothing about the code.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from catchup import caught_up, daemon_config
from common import (
    REPO,
    DaemonProcess,
    count_lines,
    finish_run,
    machine,
    make_workload,
    print_header,
    print_table,
    proc_stats,
    quiet_disk,
    write_results,
)
from waits_report import build
from waits_sampler import ThreadSampler


def profile(root: Path, workload: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One instrumented catch-up run: the profile, plus the run's own figures."""
    shutil.rmtree(root / "state", ignore_errors=True)
    shutil.rmtree(root / "out", ignore_errors=True)
    config = daemon_config(root, workload, args.fsync == "true")
    trace_path = root / "trace.json"
    command = [sys.executable, str(REPO / "benchmarks" / "waits_trace.py"), str(trace_path),
               str(args.switch_interval), "yield" if args.yield_per_batch else "-", "-c", str(config)]
    size = workload.stat().st_size
    quiet_disk()
    daemon = DaemonProcess(config, root / "daemon.log", command=command).start()
    try:
        sampler = ThreadSampler(daemon.pid)
        cpu_ready, _ = proc_stats(daemon.pid)
        sampler.begin()
        own = time.process_time()
        done = sample_until_caught_up(sampler, root, size, args.interval)
        sampler_cpu = time.process_time() - own
        sampler.end()
        cpu, rss = proc_stats(daemon.pid)
        loop_tid = daemon.pid  # the main thread runs the event loop
    finally:
        daemon.stop()
    delivered = count_lines(root / "out")
    assert delivered == args.records, f"daemon delivered {delivered} of {args.records}"
    trace = orjson.loads(trace_path.read_bytes())
    report = build(trace, sampler, daemon.ready, done, loop_tid)
    report.update(records=args.records, bytes=size, records_per_s=args.records / (done - daemon.ready),
                  cpu_s_proc=cpu - cpu_ready, peak_rss_mb=rss / 1e6, fsync=args.fsync == "true",
                  yield_per_batch=args.yield_per_batch, sampler_cpu_s=sampler_cpu)
    return report


def sample_until_caught_up(sampler: ThreadSampler, root: Path, size: int, interval: float) -> float:
    """Sample every ``interval`` until the daemon has caught up; the time it had."""
    next_check = next_threads = 0.0
    while True:
        now = time.perf_counter()
        if now >= next_threads:
            sampler.refresh()  # worker threads start on first use
            next_threads = now + 0.05
        sampler.sample()
        if now >= next_check:
            if caught_up(root, size):
                return time.perf_counter()
            next_check = now + 0.01
        time.sleep(max(0.0, interval - (time.perf_counter() - now)))


def print_profile(r: dict[str, Any]) -> None:
    """The tables, in the order to read them."""
    wall, cpu = r["window_s"], r["process_cpu_s"]
    print(f"\n  {r['records']:,} records, {r['bytes'] / 1e6:.0f} MB, fsync = {str(r['fsync']).lower()}: "
          f"{r['records_per_s']:,.0f} rec/s, peak RSS {r['peak_rss_mb']:.0f} MB, GIL switch interval "
          f"{r['switch_interval_s'] * 1e3:.1f} ms, {r['sampling_rounds']} sampling rounds"
          + (", experiment: yield per batch" if r["yield_per_batch"] else ""))
    print(f"  wall vs CPU: {wall:.2f} s wall, {cpu:.2f} CPU-s over all threads (wall / CPU = {wall / cpu:.2f}); "
          f"the daemon's threads waited {r['waiting_for_a_core_s']:.2f} s for a free core (run queue)")
    m = r["machine_cpu"]
    print(f"  the machine meanwhile: {m['busy_s']:.2f} CPU-s busy (every process, the daemon's {cpu:.2f} included), "
          f"{m['idle_s']:.2f} idle, {m['steal_s']:.2f} stolen by the hypervisor (summed over the cores); "
          f"the sampler used {r['sampler_cpu_s']:.2f} CPU-s\n")
    activities = ["running", "GIL wait", "idle (epoll)", "idle (no work)", "fsync", "write", "copy_file_range",
                  "read", "metadata", "sleep"]
    print("  threads (cpu and run queue: exact, from schedstat; the rest: sampled, seconds)")
    rows = []
    for t in r["threads"]:
        sampled = t["sampled_s"]
        other = sum(v for k, v in sampled.items() if k not in activities)
        rows.append([f"{t['thread']} ({t['tid']})", f"{t['cpu_s']:.2f}", f"{t['waiting_for_a_core_s']:.2f}",
                     *(f"{sampled.get(k, 0):.2f}" for k in activities), f"{other:.2f}"])
    print_table(["thread", "on cpu", "run queue", *activities, "other"], rows)
    print("\n  stages (seconds: union of its calls within the window; cpu: the calling thread's; sampled: "
          "what that thread was doing meanwhile)")
    rows = []
    for s in r["stages"]:
        cpu_s = "-" if s["cpu_s"] is None else f"{s['cpu_s']:.2f}"
        sampled = ", ".join(f"{k} {v:.2f}" for k, v in s["sampled_s"].items() if v >= 0.005)
        rows.append([s["side"], s["stage"], s["calls"], f"{s['seconds']:.2f}", f"{100 * s['seconds'] / wall:.0f}%",
                     cpu_s, sampled])
    print_table(["side", "stage", "calls", "seconds", "of wall", "cpu", "sampled"], rows)
    print("\n  who waits: the event loop's idle time (in select), by what the pipeline waited for meanwhile")
    print_table(["", "seconds"], [[k, f"{v:.2f}"] for k, v in r["who_waits"].items()])
    conc = r["concurrency"]
    print("\n  daemon threads running at once (sampled; running = on a core or waiting for one): "
          + ", ".join(f"{n}: {v:.2f} s" for n, v in conc["running_threads_s"].items()))
    print("  when none was running, they were waiting for:")
    print_table(["", "seconds"], [[k, f"{v:.2f}"] for k, v in conc["nobody_running_s"].items()])
    print(f"  the processor parsed {r['batches_per_processor_step']:.1f} batches per turn of the event loop")
    print("\n  hand-offs to worker threads (asyncio.to_thread): call → start in the thread, end → caller resumed")
    print_table(["function", "calls", "in total s", "in median ms", "in max ms", "run s", "back total s",
                 "back median ms", "back max ms"],
                [[h["function"], h["calls"], f"{h['in_total_s']:.3f}", f"{h['in_median_ms']:.2f}",
                  f"{h['in_max_ms']:.1f}", f"{h['run_total_s']:.2f}", f"{h['back_total_s']:.3f}",
                  f"{h['back_median_ms']:.2f}", f"{h['back_max_ms']:.1f}"] for h in r["hand_offs"]])
    cb = r["callbacks"]
    print(f"\n  event-loop callbacks (whole run): {cb['count']:,} taking {cb['total_s']:.2f} s; "
          f"{cb['over_5ms']['count']} of them over 5 ms in the window ({cb['over_5ms']['seconds']:.2f} s: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in cb["over_5ms"]["by_label_s"].items()) + ")")
    print_table(["callback", "count", "total s", "longest ms"],
                [[c["label"], c["count"], f"{c['total_s']:.3f}", f"{c['longest_ms']:.1f}"] for c in cb["busiest"]])


def main() -> None:
    """Generate the workload, profile one run, print and save the profile."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--max-chars", type=int, default=65536)
    ap.add_argument("--fsync", choices=("true", "false"), default="true")
    ap.add_argument("--interval", type=float, default=0.001, help="seconds between thread samples")
    ap.add_argument("--switch-interval", type=float, default=0.0,
                    help="GIL switch interval for the daemon, seconds (0: the daemon's own)")
    ap.add_argument("--yield-per-batch", action="store_true",
                    help="experiment: the processor lets the event loop run other tasks before each batch")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    info = machine()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-waits-"))
    root.mkdir(parents=True, exist_ok=True)
    workload = root / "agent.log"
    workload.unlink(missing_ok=True)
    make_workload(workload, args.records, args.max_chars)
    try:
        result = profile(root, workload, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {**finish_run(info), **result}
    print_header("wait profile: backlog → file output (catchup.py's workload), one instrumented run", report)
    print_profile(report)
    variant = ("-yield" if args.yield_per_batch else "") + (f"-switch-{args.switch_interval:g}"
                                                           if args.switch_interval else "")
    write_results(f"profile_waits-{args.records}-{args.max_chars}-fsync-{args.fsync}{variant}", report)


if __name__ == "__main__":
    main()
