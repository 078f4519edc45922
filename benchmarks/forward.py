#!/usr/bin/env python3
"""Forward input: records/s received and committed (acked) for ~1 KB records in PackedForward
chunks, next to the floor on the same records.

  .venv/bin/python benchmarks/forward.py                       # 100,000 records of ~1 KB
  .venv/bin/python benchmarks/forward.py --chunk-records 500 --in-flight 8 --connections 2
  .venv/bin/python benchmarks/forward.py --fsync false
  .venv/bin/python benchmarks/forward.py --parse-workers 2     # chunks decoded in two worker processes
  .venv/bin/python benchmarks/forward.py --runs 1 --trace      # where the daemon's time goes, per stage

A client in this process sends the workload as PackedForward chunks (EventTime entries, a
``chunk`` id each, at most ``--in-flight`` unacknowledged at once per connection, as
out_forward with ``require_ack_response``; ``--connections`` splits the chunks over that many
connections, as a fleet of forwarders) to a daemon with a forward source and a file output.
The chunks are encoded before the clock starts, so the client's own cost is the socket writes
(its CPU seconds are printed: it shares the machine). The daemon's time runs from the first
byte sent until the last ack (every record fsynced in the buffer: "committed"), and until the
file output holds every record ("delivered").

Two floors run on the same records, in their own processes, alternating with the daemon:
``floor.py`` (the project's floor: JSON lines read, parsed, two fields added, serialised,
written) and the same least work from this input, the PackedForward messages (msgpack unpacked
instead of JSON parsed: ``--msgpack-floor``). Decoding msgpack costs more than parsing the same
record as JSON, so the second one is the least any forward receiver in Python does.

``--trace`` runs the daemon with a stopwatch around each stage a chunk goes through (wrapped from
outside, ``pipeline/`` is unchanged; a microsecond or two per call, a few calls per chunk): msgpack
decoding, the processor, the commit's worker-thread step and its parts (frames, chunk journal,
positions), the collector's passes, and the event loop's idle time in epoll, counted between the
first byte sent and the last ack. The table says which of the loop's CPU and the commit's fsyncs
bounds the run.

Prints a table and writes benchmarks/results/forward-<records>.json. Medians of --runs
alternating runs (floor, daemon, floor, daemon, ...).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
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
    peak_rss_shared_once,
    print_header,
    proc_stats,
    quiet_disk,
    run_floor,
    write_results,
)

from tests.support.elasticsearch import free_port


def daemon_config(root: Path, port: int, fsync: bool, workers: int = 0) -> Path:
    config = root / "logferry.toml"
    config.write_text(f"""
state_dir = "{root / 'state'}"
fsync = {'true' if fsync else 'false'}
parse_workers = {workers}
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


def send_all(port: int, chunks: list[tuple[str, bytes, int]], in_flight: int, connections: int) -> float:
    """Send every chunk over ``connections`` connections (chunk i on connection i mod n), each with
    at most ``in_flight`` unacknowledged; seconds until the last ack."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    with ThreadPoolExecutor(connections) as pool:
        start = time.perf_counter()
        sent = [pool.submit(send_one, socks[n], chunks[n::connections], in_flight) for n in range(connections)]
        for future in sent:
            future.result()  # a lost connection voids the run
        seconds = time.perf_counter() - start
    for sock in socks:
        sock.close()
    return seconds


def send_one(sock: socket.socket, chunks: list[tuple[str, bytes, int]], in_flight: int) -> None:
    """Send ``chunks`` on one connection, at most ``in_flight`` unacknowledged, until the last ack."""
    unpacker = msgpack.Unpacker(raw=False)
    pending: set[str] = set()
    index = 0
    while index < len(chunks) or pending:
        while index < len(chunks) and len(pending) < in_flight:
            chunk, data, _ = chunks[index]
            sock.sendall(data)
            pending.add(chunk)
            index += 1
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"the daemon closed the connection with {len(pending)} chunks unacknowledged")
        unpacker.feed(data)
        for reply in unpacker:
            pending.discard(reply["ack"])


def msgpack_floor(messages: Path, out: Path) -> None:
    """The least work from PackedForward messages to JSON lines, as floor.py does from JSON lines:
    unpack each message and its entries, add hostname and ingested_at, serialise, write. Prints
    floor.py's line."""
    host = socket.gethostname()
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    n = 0
    start = time.perf_counter()
    with messages.open("rb") as src, out.open("ab") as sink:
        stream = msgpack.Unpacker(src, raw=False, max_buffer_size=1 << 30)
        for _tag, entries, _options in stream:
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            records = msgpack.Unpacker(raw=False, ext_hook=_event_time, max_buffer_size=len(entries))
            records.feed(entries)
            buf = []
            for _when, record in records:
                record["hostname"] = host
                record["ingested_at"] = now
                buf.append(dumps(record, option=option))
                n += 1
            sink.write(b"".join(buf))
    seconds = time.perf_counter() - start
    print(f"records={n} seconds={seconds:.3f} records_per_s={n / seconds:.0f}")


def _event_time(code: int, data: bytes) -> float:
    seconds, nanos = struct.unpack(">II", data)
    return float(seconds + nanos / 1e9)


def run_msgpack_floor(messages: Path, out: Path) -> dict[str, float]:
    """One run of ``msgpack_floor`` in its own process (its strings fresh, as the daemon's are)."""
    out.unlink(missing_ok=True)
    quiet_disk()
    ru0 = os.times()
    text = subprocess.run([sys.executable, __file__, "--msgpack-floor", str(messages), str(out)], check=True,
                          capture_output=True, text=True).stdout
    ru1 = os.times()
    seconds = float(text.split("seconds=")[1].split()[0])
    return {"seconds": seconds, "cpu_s": (ru1.children_user + ru1.children_system)
            - (ru0.children_user + ru0.children_system)}


def trace_daemon(out: Path, argv: list[str]) -> int:
    """``logferry run ARGV`` in this process with each stage timed (see the module doc); the calls
    (stage, start, seconds, thread CPU seconds) and each commit's batch count go to OUT at the stop."""
    import gc
    import selectors
    import threading

    from pipeline import cli
    from pipeline.buffer.file_buffer import CommitPlan
    from pipeline.runtime.committer import Committer
    from pipeline.sources.forward import source
    from pipeline.sources.forward.chunks import ChunkJournal
    from pipeline.sources.tail.checkpoint import PositionStore
    from pipeline.transforms.records import RecordProcessor

    calls: list[tuple[str, float, float, float]] = []
    batches: list[tuple[float, int]] = []

    def wrap(owner: Any, name: str, stage: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append((stage, start, time.perf_counter() - start, time.thread_time() - cpu))
        setattr(owner, name, timed)

    wrap(source, "decode", "loop: msgpack decode")  # the module's name, as Connection calls it
    wrap(source.Connection, "_batch", "loop: records to a batch")
    wrap(RecordProcessor, "process", "loop: process (enrich, serialise)")
    wrap(Committer, "_stage", "loop: commit staging (frames, CRC)")
    wrap(Committer, "_write", "thread: commit write, all")
    wrap(CommitPlan, "apply", "thread: frames write + fsync")
    wrap(ChunkJournal, "write", "thread: chunk journal append + fsync")
    wrap(PositionStore, "save", "thread: positions save (atomic)")
    loop_thread = threading.get_ident()
    wrap_idle = selectors.EpollSelector.select

    def select(self: selectors.EpollSelector, timeout: float | None = None) -> Any:
        if threading.get_ident() != loop_thread:
            return wrap_idle(self, timeout)
        start = time.perf_counter()
        try:
            return wrap_idle(self, timeout)
        finally:
            calls.append(("loop: idle in epoll", start, time.perf_counter() - start, 0.0))
    setattr(selectors.EpollSelector, "select", select)  # noqa: B010 (mypy: a method replaced)
    commit = Committer.commit

    async def counted(self: Committer, items: list[Any]) -> None:
        batches.append((time.perf_counter(), len(items)))
        await commit(self, items)
    setattr(Committer, "commit", counted)  # noqa: B010 (mypy: a method replaced)
    started: list[float] = []

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            calls.append((f"loop: gc pass, generation {info['generation']}", started[0],
                          time.perf_counter() - started[0], 0.0))
    gc.callbacks.append(collected)
    try:
        return cli.main(["run", *argv])
    finally:
        out.write_bytes(orjson.dumps({"calls": calls, "batches": batches}))


def trace_table(path: Path, start: float, end: float) -> dict[str, Any]:
    """Per stage, the calls that began between ``start`` and ``end``: count, seconds, median and
    longest call (ms), thread CPU seconds; and the commits' batch counts."""
    trace = orjson.loads(path.read_bytes())
    stages: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for stage, began, seconds, cpu in trace["calls"]:
        if start <= began <= end:
            stages[stage].append((seconds, cpu))
    table = {stage: {"calls": len(rows), "seconds": sum(r[0] for r in rows),
                     "median_ms": statistics.median(r[0] for r in rows) * 1e3,
                     "max_ms": max(r[0] for r in rows) * 1e3, "cpu_s": sum(r[1] for r in rows)}
             for stage, rows in sorted(stages.items())}
    sizes = [n for began, n in trace["batches"] if start <= began <= end]
    return {"window_s": end - start, "stages": table, "commits": len(sizes),
            "batches_per_commit": statistics.mean(sizes) if sizes else 0.0}


def run_daemon(root: Path, chunks: list[tuple[str, bytes, int]], total: int, fsync: bool,
               in_flight: int, connections: int, trace: bool = False, workers: int = 0) -> dict[str, Any]:
    shutil.rmtree(root / "state", ignore_errors=True)
    shutil.rmtree(root / "out", ignore_errors=True)
    port = free_port()
    config = daemon_config(root, port, fsync, workers)
    trace_path = root / "trace.json"
    command = [sys.executable, __file__, "--trace-daemon", str(trace_path), "-c", str(config)] if trace else None
    quiet_disk()
    with DaemonProcess(config, root / "daemon.log", command=command) as daemon:
        while b" listening on " not in (root / "daemon.log").read_bytes():  # bound just after "running"
            time.sleep(0.005)
        cpu_ready, _ = proc_stats(daemon.pid)
        client_cpu = time.process_time()
        start = time.perf_counter()
        acked = send_all(port, chunks, in_flight, connections)
        client_cpu = time.process_time() - client_cpu
        while count_lines(root / "out") < total:
            time.sleep(0.01)
        delivered = time.perf_counter() - start
        cpu, rss = proc_stats(daemon.pid)
        once = peak_rss_shared_once(daemon.pid)
    result: dict[str, Any] = {"seconds": acked, "delivered_s": delivered, "cpu_s": cpu - cpu_ready,
                              "peak_rss_mb": rss / 1e6, "peak_rss_shared_once_mb": once / 1e6,
                              "client_cpu_s": client_cpu}
    if trace:  # written at the daemon's stop
        result["trace"] = trace_table(trace_path, start, start + acked)
    return result


def main() -> None:
    if sys.argv[1:2] == ["--trace-daemon"]:  # the daemon of a --trace run (its own arguments follow)
        raise SystemExit(trace_daemon(Path(sys.argv[2]), sys.argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--max-chars", type=int, default=400, help="generator size knob: 400 gives ~1 KB records")
    ap.add_argument("--chunk-records", type=int, default=1000, help="records per PackedForward chunk")
    ap.add_argument("--in-flight", type=int, default=4, help="chunks sent before their ack arrives, per connection")
    ap.add_argument("--connections", type=int, default=1, help="client connections sharing the chunks")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fsync", choices=("true", "false"), default="true")
    ap.add_argument("--parse-workers", type=int, default=0,
                    help="the daemon's parse_workers (PackedForward chunks decoded in worker processes)")
    ap.add_argument("--trace", action="store_true", help="time each stage in the daemon (see the module doc)")
    ap.add_argument("--msgpack-floor", nargs=2, type=Path, metavar=("MESSAGES", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.msgpack_floor:
        msgpack_floor(*args.msgpack_floor)
        return
    fsync = args.fsync == "true"
    info = machine()  # before the work: its load and CPU figures are the run's
    root = Path(tempfile.mkdtemp(prefix="logferry-bench-forward-"))
    workload = root / "records.jsonl"
    make_workload(workload, args.records, args.max_chars)
    size = workload.stat().st_size
    chunks = encode_chunks(workload, args.chunk_records)
    messages = root / "messages.msgpack"
    messages.write_bytes(b"".join(data for _, data, _ in chunks))
    floors, packed_floors, daemons = [], [], []
    for _ in range(args.runs):
        floors.append(run_floor(workload, root / "floor.out"))
        packed_floors.append(run_msgpack_floor(messages, root / "floor.out"))
        daemons.append(run_daemon(root, chunks, args.records, fsync, args.in_flight, args.connections,
                                  args.trace, args.parse_workers))
    report = summarize(args, size, floors, packed_floors, daemons, fsync, finish_run(info))
    print_header("forward: PackedForward chunks → acked (committed) → file output, next to the floor", report)
    print_table(report)
    write_results(f"forward-{args.records}" + (f"-workers{args.parse_workers}" if args.parse_workers else ""), report)
    shutil.rmtree(root, ignore_errors=True)


def summarize(args: argparse.Namespace, size: int, floors: list[dict[str, float]],
              packed_floors: list[dict[str, float]], daemons: list[dict[str, float]], fsync: bool,
              info: dict[str, Any]) -> dict[str, Any]:
    floor_s = statistics.median(f["seconds"] for f in floors)
    packed_s = statistics.median(f["seconds"] for f in packed_floors)
    acked_s = statistics.median(d["seconds"] for d in daemons)
    delivered_s = statistics.median(d["delivered_s"] for d in daemons)
    return {
        **info, "records": args.records, "bytes": size, "record_bytes": size / args.records,
        "chunk_records": args.chunk_records, "in_flight": args.in_flight, "connections": args.connections,
        "fsync": fsync, "parse_workers": args.parse_workers,
        "floor": {"records_per_s": args.records / floor_s, "mb_per_s": size / floor_s / 1e6, "runs": floors},
        "msgpack_floor": {"records_per_s": args.records / packed_s, "mb_per_s": size / packed_s / 1e6,
                          "cpu_s": statistics.median(f["cpu_s"] for f in packed_floors), "runs": packed_floors},
        "logferry": {"records_per_s": args.records / acked_s, "mb_per_s": size / acked_s / 1e6,
                     "delivered_records_per_s": args.records / delivered_s,
                     "cpu_s": statistics.median(d["cpu_s"] for d in daemons),
                     "client_cpu_s": statistics.median(d["client_cpu_s"] for d in daemons),
                     "peak_rss_mb": max(d["peak_rss_mb"] for d in daemons),
                     "peak_rss_shared_once_mb": max(d["peak_rss_shared_once_mb"] for d in daemons),
                     "ratio_to_floor": floor_s / acked_s, "ratio_to_msgpack_floor": packed_s / acked_s,
                     "runs": daemons},
    }


def print_table(r: dict[str, Any]) -> None:
    print(f"{r['records']} records of {r['record_bytes']:.0f} B, {r['chunk_records']} per chunk, "
          f"{r['in_flight']} in flight on each of {r['connections']} connection(s), "
          f"fsync = {str(r['fsync']).lower()}, parse_workers = {r['parse_workers']}, {r['machine']}, {r['date']}")
    floor, packed, ours = r["floor"], r["msgpack_floor"], r["logferry"]
    print(f"{'':34} {'rec/s':>10} {'MB/s':>8} {'CPU-s':>7} {'peak RSS':>9} {'/ floor':>8} {'/ msgpack floor':>16}")
    print(f"{'floor.py (JSON lines → file)':34} {floor['records_per_s']:>10.0f} {floor['mb_per_s']:>8.1f}")
    print(f"{'msgpack floor (PackedForward → file)':34} {packed['records_per_s']:>10.0f} {packed['mb_per_s']:>8.1f} "
          f"{packed['cpu_s']:>7.2f}")
    print(f"{'logferry received + acked':34} {ours['records_per_s']:>10.0f} {ours['mb_per_s']:>8.1f} "
          f"{ours['cpu_s']:>7.2f} {ours['peak_rss_mb']:>6.0f} MB {ours['ratio_to_floor']:>7.2f}x "
          f"{ours['ratio_to_msgpack_floor']:>15.2f}x")
    print(f"{'logferry delivered to file':34} {ours['delivered_records_per_s']:>10.0f}")
    print(f"  peak RSS sums the daemon and its parse workers; with the pages they share counted once: "
          f"{ours['peak_rss_shared_once_mb']:.0f} MB")
    print(f"  the client (this process) used {ours['client_cpu_s']:.2f} CPU-s")
    for n, run in enumerate(ours["runs"]):
        if "trace" in run:
            print_trace(n + 1, run["trace"])


def print_trace(run: int, trace: dict[str, Any]) -> None:
    """One traced run's stages, from the first byte sent to the last ack."""
    print(f"  traced run {run}: {trace['window_s']:.3f} s to the last ack, {trace['commits']} commits of "
          f"{trace['batches_per_commit']:.2f} chunks on average")
    print(f"    {'stage':40} {'calls':>6} {'total s':>8} {'median ms':>10} {'max ms':>8} {'CPU-s':>6}")
    for stage, row in trace["stages"].items():
        print(f"    {stage:40} {row['calls']:>6} {row['seconds']:>8.3f} {row['median_ms']:>10.2f} "
              f"{row['max_ms']:>8.2f} {row['cpu_s']:>6.3f}")


if __name__ == "__main__":
    main()
