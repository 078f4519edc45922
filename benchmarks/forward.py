#!/usr/bin/env python3
"""Forward input: records/s received and committed (acked) for ~1 KB records in PackedForward
chunks, next to the floor on the same records.

  .venv/bin/python benchmarks/forward.py                       # 100,000 records of ~1 KB
  .venv/bin/python benchmarks/forward.py --chunk-records 500 --in-flight 8
  .venv/bin/python benchmarks/forward.py --fsync false

A client in this process sends the workload as PackedForward chunks (EventTime entries, a
``chunk`` id each, at most ``--in-flight`` unacknowledged at once, as out_forward with
``require_ack_response``) to a daemon with a forward source and a file output. The chunks
are encoded before the clock starts, so the client's own cost is the socket writes. The
daemon's time runs from the first byte sent until the last ack (every record fsynced in the
buffer: "committed"), and until the file output holds every record ("delivered").
The floor (``floor.py``) reads the same records as JSON lines from a file.

Prints a table and writes benchmarks/results/forward-<records>.json. Medians of --runs
alternating runs (floor, daemon, floor, daemon, ...).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import orjson
from common import (
    DaemonProcess,
    count_lines,
    finish_run,
    machine,
    make_workload,
    print_header,
    proc_stats,
    quiet_disk,
    run_floor,
    write_results,
)

from tests.support.elasticsearch import free_port


def daemon_config(root: Path, port: int, fsync: bool) -> Path:
    config = root / "logferry.toml"
    config.write_text(f"""
state_dir = "{root / 'state'}"
fsync = {'true' if fsync else 'false'}
[health]
listen = ""
[sources.fluent]
type = "forward"
port = {port}
[outputs.debug]
type = "file"
path = "{root / 'out' / '%Y%m%d-%H.jsonl'}"
[outputs.debug.buffer]
flush_interval = 0.2
total_limit_bytes = 268435456
""")
    return config


def encode_chunks(workload: Path, per_chunk: int) -> list[tuple[str, bytes, int]]:
    """(chunk id, message bytes, records) for the workload's records, ``per_chunk`` records each."""
    records = [orjson.loads(line) for line in workload.read_bytes().splitlines()]
    stamp = msgpack.ExtType(0, struct.pack(">II", int(time.time()), 0))
    chunks = []
    for n, first in enumerate(range(0, len(records), per_chunk)):
        group = records[first:first + per_chunk]
        entries = b"".join(msgpack.packb([stamp, r]) for r in group)
        chunk = f"bench-{n}"
        chunks.append((chunk, msgpack.packb(["bench.forward", entries, {"chunk": chunk, "size": len(group)}]),
                       len(group)))
    return chunks


def send_all(port: int, chunks: list[tuple[str, bytes, int]], in_flight: int) -> float:
    """Send every chunk with at most ``in_flight`` unacknowledged; seconds until the last ack."""
    sock = socket.create_connection(("127.0.0.1", port))
    unpacker = msgpack.Unpacker(raw=False)
    pending: set[str] = set()
    start = time.perf_counter()
    index = 0
    while index < len(chunks) or pending:
        while index < len(chunks) and len(pending) < in_flight:
            chunk, data, _ = chunks[index]
            sock.sendall(data)
            pending.add(chunk)
            index += 1
        unpacker.feed(sock.recv(65536))
        for reply in unpacker:
            pending.discard(reply["ack"])
    seconds = time.perf_counter() - start
    sock.close()
    return seconds


def run_daemon(root: Path, chunks: list[tuple[str, bytes, int]], total: int, fsync: bool,
               in_flight: int) -> dict[str, float]:
    shutil.rmtree(root / "state", ignore_errors=True)
    shutil.rmtree(root / "out", ignore_errors=True)
    port = free_port()
    config = daemon_config(root, port, fsync)
    quiet_disk()
    with DaemonProcess(config, root / "daemon.log") as daemon:
        while b" listening on " not in (root / "daemon.log").read_bytes():  # bound just after "running"
            time.sleep(0.005)
        cpu_ready, _ = proc_stats(daemon.pid)
        start = time.perf_counter()
        acked = send_all(port, chunks, in_flight)
        while count_lines(root / "out") < total:
            time.sleep(0.01)
        delivered = time.perf_counter() - start
        cpu, rss = proc_stats(daemon.pid)
    return {"seconds": acked, "delivered_s": delivered, "cpu_s": cpu - cpu_ready, "peak_rss_mb": rss / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--max-chars", type=int, default=400, help="generator size knob: 400 gives ~1 KB records")
    ap.add_argument("--chunk-records", type=int, default=1000, help="records per PackedForward chunk")
    ap.add_argument("--in-flight", type=int, default=4, help="chunks sent before their ack arrives")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fsync", choices=("true", "false"), default="true")
    args = ap.parse_args()
    fsync = args.fsync == "true"
    info = machine()  # before the work: its load and CPU figures are the run's
    root = Path(tempfile.mkdtemp(prefix="logferry-bench-forward-"))
    workload = root / "records.jsonl"
    make_workload(workload, args.records, args.max_chars)
    size = workload.stat().st_size
    chunks = encode_chunks(workload, args.chunk_records)
    floors, daemons = [], []
    for _ in range(args.runs):
        floors.append(run_floor(workload, root / "floor.out"))
        daemons.append(run_daemon(root, chunks, args.records, fsync, args.in_flight))
    report = summarize(args, size, floors, daemons, fsync, finish_run(info))
    print_header("forward: PackedForward chunks → acked (committed) → file output, next to the floor", report)
    print_table(report)
    write_results(f"forward-{args.records}", report)
    shutil.rmtree(root, ignore_errors=True)


def summarize(args: argparse.Namespace, size: int, floors: list[dict[str, float]],
              daemons: list[dict[str, float]], fsync: bool, info: dict[str, Any]) -> dict[str, Any]:
    floor_s = statistics.median(f["seconds"] for f in floors)
    acked_s = statistics.median(d["seconds"] for d in daemons)
    delivered_s = statistics.median(d["delivered_s"] for d in daemons)
    return {
        **info, "records": args.records, "bytes": size, "record_bytes": size / args.records,
        "chunk_records": args.chunk_records, "in_flight": args.in_flight, "fsync": fsync,
        "floor": {"records_per_s": args.records / floor_s, "mb_per_s": size / floor_s / 1e6, "runs": floors},
        "logferry": {"records_per_s": args.records / acked_s, "mb_per_s": size / acked_s / 1e6,
                     "delivered_records_per_s": args.records / delivered_s,
                     "cpu_s": statistics.median(d["cpu_s"] for d in daemons),
                     "peak_rss_mb": max(d["peak_rss_mb"] for d in daemons),
                     "ratio_to_floor": floor_s / acked_s, "runs": daemons},
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"{r['records']} records of {r['record_bytes']:.0f} B, {r['chunk_records']} per chunk, "
          f"{r['in_flight']} in flight, fsync = {str(r['fsync']).lower()}, {r['machine']}, {r['date']}")
    floor, ours = r["floor"], r["logferry"]
    print(f"{'':28} {'rec/s':>10} {'MB/s':>8} {'CPU-s':>7} {'peak RSS':>9} {'/ floor':>8}")
    print(f"{'floor (file → file)':28} {floor['records_per_s']:>10.0f} {floor['mb_per_s']:>8.1f}")
    print(f"{'logferry received + acked':28} {ours['records_per_s']:>10.0f} {ours['mb_per_s']:>8.1f} "
          f"{ours['cpu_s']:>7.2f} {ours['peak_rss_mb']:>6.0f} MB {ours['ratio_to_floor']:>7.2f}x")
    print(f"{'logferry delivered to file':28} {ours['delivered_records_per_s']:>10.0f}")


if __name__ == "__main__":
    main()
