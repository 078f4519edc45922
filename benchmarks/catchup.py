#!/usr/bin/env python3
"""Backlog catch-up: the whole workload already in the file, daemon started, time until
every record is in the file output; next to the floor measured in the same run.

  .venv/bin/python benchmarks/catchup.py                      # 100,000 typical records
  .venv/bin/python benchmarks/catchup.py --records 1000000 --max-chars 300   # small records
  .venv/bin/python benchmarks/catchup.py --shared-workload   # ../shared/bench/gen_interactions.py
  .venv/bin/python benchmarks/catchup.py --fsync true         # only the default mode
  .venv/bin/python benchmarks/catchup.py --fsync true --redact both   # with and without a redact transform
  .venv/bin/python benchmarks/catchup.py --parse-workers 0,1,2        # parsing on the loop, then in 1 and 2 processes

Both durability modes are measured by default: ``fsync = true`` (the default: power-loss
safe) and ``fsync = false`` (page cache only, still safe against kill -9). ``--redact on``
puts a redact transform (every detector on, mask mode, default fields: prompt and response)
on the file output; ``both`` runs the daemon with and without it in each round.

Prints a table and writes benchmarks/results/catchup-<workload>.json. Medians of --runs
alternating runs (floor, daemon, floor, daemon, ...).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from common import (
    DaemonProcess,
    count_lines,
    durable_write_seconds,
    finish_run,
    machine,
    make_workload,
    peak_rss_shared_once,
    print_header,
    proc_stats,
    quiet_disk,
    run_floor,
    write_results,
)


def daemon_config(root: Path, workload: Path, fsync: bool, redact: bool = False, workers: int = 0) -> Path:
    config = root / "logferry.toml"
    transforms = '["pii"]' if redact else "[]"
    config.write_text(f"""
state_dir = "{root / 'state'}"
fsync = {'true' if fsync else 'false'}
parse_workers = {workers}
[sources.agent]
type = "tail"
paths = ["{workload}"]
tag = "ai.interactions"
[outputs.debug]
type = "file"
path = "{root / 'out' / '%Y%m%d-%H.jsonl'}"
transforms = {transforms}
[outputs.debug.buffer]
flush_interval = 0.2
total_limit_bytes = 268435456
[transforms.pii]
type = "redact"
""")
    return config


def caught_up(root: Path, size: int) -> bool:
    positions = root / "state" / "positions.json"
    buffer = root / "state" / "buffer" / "debug"
    if not positions.exists():
        return False
    files = orjson.loads(positions.read_bytes())["files"]
    if not files or files[0]["offset"] < size:
        return False
    return not any(p.suffix in (".staged", ".queued") for p in buffer.iterdir())


def run_daemon(root: Path, workload: Path, fsync: bool, redact: bool = False, workers: int = 0) -> dict[str, float]:
    shutil.rmtree(root / "state", ignore_errors=True)
    shutil.rmtree(root / "out", ignore_errors=True)
    config = daemon_config(root, workload, fsync, redact, workers)
    quiet_disk()
    size = workload.stat().st_size
    with DaemonProcess(config, root / "daemon.log") as daemon:
        cpu_ready, _ = proc_stats(daemon.pid)
        while not caught_up(root, size):
            time.sleep(0.01)
        done = time.perf_counter()
        cpu, rss = proc_stats(daemon.pid)
        once = peak_rss_shared_once(daemon.pid)
    return {"seconds": done - daemon.ready, "cpu_s": cpu - cpu_ready, "peak_rss_mb": rss / 1e6,
            "peak_rss_shared_once_mb": once / 1e6,
            "wall_with_startup": done - daemon.started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--max-chars", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shared-workload", action="store_true", help="generate with ../shared/bench")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--fsync", choices=("both", "true", "false"), default="both", help="durability modes to run")
    ap.add_argument("--redact", choices=("off", "on", "both"), default="off", help="a redact transform on the output")
    ap.add_argument("--parse-workers", default="0", help="comma-separated parse_workers settings to run, e.g. 0,2")
    args = ap.parse_args()
    workers = [int(n) for n in args.parse_workers.split(",")]
    fsyncs = {"both": [True, False], "true": [True], "false": [False]}[args.fsync]
    redacts = {"both": [False, True], "on": [True], "off": [False]}[args.redact]
    modes = [(fsync, redact, n) for fsync in fsyncs for redact in redacts for n in workers]
    info = machine()  # before the work: its load and CPU figures are the run's
    root = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    workload = root / "agent.log"
    workload.unlink(missing_ok=True)
    make_workload(workload, args.records, args.max_chars, args.shared_workload)
    size = workload.stat().st_size
    floors: list[dict[str, float]] = []
    disk: list[float] = []
    daemons: dict[tuple[bool, bool, int], list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.runs):
        floors.append(run_floor(workload, root / "floor.out"))
        for mode in modes:
            daemons[mode].append(run_daemon(root, workload, *mode))
            delivered = count_lines(root / "out")
            assert delivered == args.records, f"daemon delivered {delivered} of {args.records}"
        disk.append(durable_write_seconds(root, size))  # last: freeing its files must not slow a timed run
    report = summarize(args, size, floors, daemons, finish_run(info))
    report["durable_io"] = {"seconds": statistics.median(disk), "runs": disk,
                            "records_per_s": args.records / statistics.median(disk)}
    print_header("catch-up: backlog → file output, next to the floor", report)
    print_table(report)
    write_results(f"catchup-{args.records}-{args.max_chars}" + ("" if args.redact == "off" else "-redact"), report)
    shutil.rmtree(root, ignore_errors=True)


# Result keys by (fsync, redact): fsync = true is the default.
ROW = {(True, False): "logferry", (False, False): "logferry_no_fsync", (True, True): "logferry_redact",
       (False, True): "logferry_no_fsync_redact"}


def row_key(mode: tuple[bool, bool, int]) -> str:
    """The result key of a (fsync, redact, parse_workers) mode: ``ROW``'s, with ``_workersN`` when N > 0."""
    return ROW[mode[:2]] + (f"_workers{mode[2]}" if mode[2] else "")


def summarize(args: argparse.Namespace, size: int, floors: list[dict[str, float]],
              daemons: dict[tuple[bool, bool, int], list[dict[str, float]]], info: dict[str, Any]) -> dict[str, Any]:
    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    floor_s = med(floors, "seconds")
    report: dict[str, Any] = {
        **info, "records": args.records, "bytes": size,
        "workload": "shared gen_interactions.py" if args.shared_workload else "pipeline.generator",
        "floor": {"records_per_s": args.records / floor_s, "mb_per_s": size / floor_s / 1e6,
                  "cpu_s": med(floors, "cpu_s"), "runs": floors},
    }
    for mode, runs in daemons.items():
        daemon_s = med(runs, "seconds")
        report[row_key(mode)] = {
            "fsync": mode[0], "redact": mode[1], "parse_workers": mode[2], "records_per_s": args.records / daemon_s,
            "mb_per_s": size / daemon_s / 1e6,
            "cpu_s": med(runs, "cpu_s"), "peak_rss_mb": max(d["peak_rss_mb"] for d in runs),
            "peak_rss_shared_once_mb": max(d["peak_rss_shared_once_mb"] for d in runs), "runs": runs,
            "ratio_to_floor": floor_s / daemon_s,
        }
    return report


def print_table(r: dict[str, Any]) -> None:
    print(f"{r['records']} records, {r['bytes'] / 1e6:.0f} MB ({r['workload']}), {r['machine']} ({r['cpu']}), "
          f"{r['date']}")
    # peak RSS: summed over the daemon and its parse workers; "shared 1x": their shared pages counted once
    print(f"{'':28} {'rec/s':>10} {'MB/s':>8} {'CPU-s':>7} {'peak RSS':>9} {'shared 1x':>9} {'/ floor':>8}")
    labels = {"floor": "floor", "logferry": "logferry (fsync)", "logferry_no_fsync": "logferry (fsync=false)",
              "logferry_redact": "redact (fsync)", "logferry_no_fsync_redact": "redact (fsync=false)"}
    rows = [(key, labels[key]) for key in labels if key in r]
    rows += [(key, f"{labels[key.split('_workers')[0]]} w={key.split('_workers')[1]}") for key in r
             if "_workers" in key]
    rows.sort(key=lambda kv: list(labels).index(kv[0].split("_workers")[0]))
    for key, label in rows:
        row = r[key]
        rss = f"{row['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in row else "-"
        once = f"{row['peak_rss_shared_once_mb']:.0f} MB" if "peak_rss_shared_once_mb" in row else "-"
        ratio = f"{row['ratio_to_floor']:.2f}x" if "ratio_to_floor" in row else "-"
        print(f"{label:28} {row['records_per_s']:>10.0f} {row['mb_per_s']:>8.1f} {row['cpu_s']:>7.2f} {rss:>9} "
              f"{once:>9} {ratio:>8}")
    if "durable_io" in r:
        io = r["durable_io"]
        print(f"this disk alone, writing the workload twice (buffer + output) with an fsync every 8 MiB: "
              f"{io['seconds']:.2f} s = {io['records_per_s']:.0f} rec/s, a bound for fsync = true")


if __name__ == "__main__":
    main()
