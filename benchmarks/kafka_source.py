#!/usr/bin/env python3
"""Backlog catch-up out of Kafka: kafka source → file output, next to the floor measured in the same run.

  .venv/bin/python benchmarks/kafka_source.py                 # 100,000 typical records, 3 runs
  .venv/bin/python benchmarks/kafka_source.py --records 20000 --runs 1
  .venv/bin/python benchmarks/kafka_source.py --parse-workers 0,2     # each run: on the loop, then 2 workers

A throw-away single-node Kafka 4.4.0 (tests/support/kafka.py: the cached Maven jars, KRaft,
384 MB heap) on this machine. The workload is generated, then produced once (before any
timing) into a topic of 3 partitions, one message per record, zstd-compressed as an agent
host's kafka output would. Then, alternately, the floor (floor.py over the workload file)
and a fresh daemon (kafka source in a fresh consumer group → file output, production
defaults, ``fsync = true``), timed from "logferry running" until every partition's saved
position is at its end and the file output's buffer is empty. Each run's output is counted.
Reports records/s, logferry's CPU and peak RSS, the broker's CPU over the same window, and
the ratio to the floor (floor seconds / logferry seconds: ≥ 1.0 means as fast as the floor).

Each run also times a plain client: this process's confluent-kafka consumer (a fresh group,
read_committed, batches of 1,000) appending every message and a newline to a file, without
fsync. That is what consuming alone costs here; the floor never talks to Kafka, and on a
2-core machine the broker takes its share of the cores.
With ``--parse-workers 0,2`` each run times one daemon per setting, in that order, next to the same
floor and plain client (CPU and peak RSS then sum the daemon and its parse workers, and the peak
with the pages they share counted once is given too).
Writes benchmarks/results/kafka-source-<records>-<max_chars>[-workersN].json (N > 0).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from common import (
    DaemonProcess,
    buffer_empty,
    count_lines,
    cpu_seconds,
    floor_medians,
    group_cpu_seconds,
    machine,
    make_workload,
    peak_rss,
    peak_rss_shared_once,
    print_client_runs,
    print_floor_runs,
    print_header,
    resident,
    run_floor,
    write_results,
)
from confluent_kafka import Consumer, Producer

from tests.support.daemon import render_toml
from tests.support.kafka import KafkaBroker

TOPIC = "bench-source"
PARTITIONS = 3


def produce_workload(kafka: KafkaBroker, workload: Path) -> int:
    """Every line of ``workload`` as one message of TOPIC; the count."""
    kafka.create_topic(TOPIC, partitions=PARTITIONS)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "compression.type": "zstd", "linger.ms": 20,
                         "message.max.bytes": 4 << 20})
    sent = 0
    with workload.open("rb") as f:
        for line in f:
            while True:
                try:
                    producer.produce(TOPIC, line.rstrip(b"\n"), partition=sent % PARTITIONS)
                    break
                except BufferError:
                    producer.poll(0.1)
            sent += 1
    assert producer.flush(300) == 0
    return sent


def warm_up(kafka: KafkaBroker) -> None:
    """A first consumer group's commit, before any timing: the broker creates its 50-partition
    ``__consumer_offsets`` topic then, which otherwise lands in the first run (0.35x vs 0.90-1.03x)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "warm-up", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    try:
        consumer.subscribe([TOPIC])
        while not (batch := consumer.consume(1, timeout=1.0)) or batch[0].error() is not None:
            pass
        consumer.commit(message=batch[0], asynchronous=False)
    finally:
        consumer.close()


def saved_ends(state: Path) -> int:
    """The sum of the kafka source's saved next offsets: the records committed to the buffers."""
    path = state / "positions.json"
    if not path.exists():
        return 0
    try:
        files = orjson.loads(path.read_bytes())["files"]
    except (ValueError, KeyError):
        return 0  # replaced while read
    return sum(int(f["offset"]) for f in files if str(f["path"]).startswith("kafka://"))


def run_once(root: Path, kafka: KafkaBroker, run: int, records: int, pgid: int, workers: int) -> dict[str, Any]:
    """A fresh daemon and consumer group over the whole topic, until every record is in the output file."""
    state, out = root / "state", root / "out"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    config = root / "logferry.toml"
    config.write_text(render_toml({
        "state_dir": state, "health": {"listen": "127.0.0.1:0"}, "enrich": {"tag_key": "tag"},
        "parse_workers": workers,
        "sources": {"bus": {"type": "kafka", "brokers": [kafka.bootstrap], "topics": [TOPIC],
                            "group_id": f"bench-{run}-{time.time_ns()}", "tag": "ai.interactions"}},
        "outputs": {"debug": {"type": "file", "path": str(out / "%Y%m%d-%H.jsonl"),
                              "buffer": {"flush_interval": 0.2, "total_limit_bytes": 1 << 30}}},
    }))
    with DaemonProcess(config, root / f"daemon-{run}.log") as daemon:
        cpu0, server0 = cpu_seconds(daemon.pid), group_cpu_seconds(pgid)
        rss_ready = resident(daemon.pid)
        deadline = time.monotonic() + 600
        while saved_ends(state) < records or not buffer_empty(state, "debug"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"not delivered after 600 s:\n{daemon.log()[-3000:]}")
            time.sleep(0.02)
        seconds = time.perf_counter() - daemon.ready
        cpu1, server1 = cpu_seconds(daemon.pid), group_cpu_seconds(pgid)
        rss, once = peak_rss(daemon.pid), peak_rss_shared_once(daemon.pid)
    written = count_lines(out)
    assert written == records, f"{written} records in the output, expected {records}"
    return {"seconds": seconds, "cpu_s": cpu1 - cpu0, "server_cpu_s": server1 - server0,
            "peak_rss_mb": rss / 1e6, "peak_rss_shared_once_mb": once / 1e6, "rss_at_start_mb": rss_ready / 1e6}


def plain_client(kafka: KafkaBroker, out: Path, records: int, pgid: int) -> dict[str, float]:
    """Every message of TOPIC appended to ``out`` by a bare consumer; wall time and CPU of this process."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"plain-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    server0, cpu0, start = group_cpu_seconds(pgid), time.process_time(), time.perf_counter()
    consumer.subscribe([TOPIC])
    seen = 0
    try:
        with out.open("wb") as f:
            while seen < records:
                batch = consumer.consume(1000, timeout=1.0)
                f.writelines(value + b"\n" for m in batch if (value := m.value()) is not None and m.error() is None)
                seen += sum(1 for m in batch if m.error() is None)
        seconds = time.perf_counter() - start
    finally:
        consumer.close()
    return {"seconds": seconds, "cpu_s": time.process_time() - cpu0, "server_cpu_s": group_cpu_seconds(pgid) - server0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--max-chars", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--parse-workers", default="0", help="comma-separated parse_workers settings to run, e.g. 0,2")
    args = ap.parse_args()
    settings = [int(n) for n in args.parse_workers.split(",")]
    info = machine()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-kafka-source-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    workload = root / "agent.log"
    workload.unlink(missing_ok=True)
    make_workload(workload, args.records, args.max_chars)
    size = workload.stat().st_size
    runs: dict[int, list[dict[str, Any]]] = {workers: [] for workers in settings}
    with KafkaBroker() as kafka:
        pgid = kafka.pid
        assert pgid is not None
        assert produce_workload(kafka, workload) == args.records
        warm_up(kafka)
        for n in range(args.runs):
            floor = run_floor(workload, root / "floor.out")
            (root / "floor.out").unlink()
            daemons = {workers: run_once(root, kafka, n, args.records, pgid, workers) for workers in settings}
            client = plain_client(kafka, root / "plain.out", args.records, pgid)
            (root / "plain.out").unlink()
            for workers, run in daemons.items():
                runs[workers].append({"floor": floor, "logferry": run, "client": client, "parse_workers": workers,
                                      "ratio_to_floor": floor["seconds"] / run["seconds"]})
    if args.workdir is None:  # a given one is kept, daemon logs included
        shutil.rmtree(root, ignore_errors=True)
    print_header("kafka source: topic backlog → kafka source → file output, next to the floor", info)
    print(f"  workload: {args.records:,} records, {size / 1e6:.0f} MB, in {PARTITIONS} partitions (zstd); "
          f"local Kafka 4.4.0, one broker")
    for workers, series in runs.items():
        report = {**info, "records": args.records, "max_chars": args.max_chars, "bytes": size,
                  "parse_workers": workers, "runs": series, **floor_medians(series, args.records)}
        print(f"\n  parse_workers = {workers}")
        print_floor_runs(series, args.records, report, server="Kafka")
        if workers:
            once = sorted(run["logferry"]["peak_rss_shared_once_mb"] for run in series)
            print(f"  peak RSS sums the daemon and its parse workers; with the pages they share counted once: "
                  f"{once[len(once) // 2]:.0f} MB (median)")
        report.update(print_client_runs(series, args.records, "logferry (kafka → buffer → file)"))
        write_results(f"kafka-source-{args.records}-{args.max_chars}" + (f"-workers{workers}" if workers else ""),
                      report)


if __name__ == "__main__":
    main()
