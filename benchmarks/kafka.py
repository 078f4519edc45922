#!/usr/bin/env python3
"""Backlog catch-up into Kafka: tail → kafka output, next to the floor measured in the same run.

  .venv/bin/python benchmarks/kafka.py                       # 100,000 typical records, 3 runs
  .venv/bin/python benchmarks/kafka.py --records 20000 --compression lz4

A throw-away single-node Kafka 4.4.0 (tests/support/kafka.py: the cached Maven jars, KRaft,
384 MB heap) on this machine. The workload is written first; then, alternately, the floor
(floor.py over the same file) and a fresh daemon (tail → kafka output with its defaults:
one transaction per chunk, acks=all, zstd) into a fresh topic of 3 partitions, timed from
"logferry running" until the file is read to its end and every chunk is committed in Kafka.
Each run's records are counted back with a read_committed consumer. Reports records/s,
logferry's CPU and peak RSS, the broker's CPU (its process group) over the same window, and
the ratio to the floor (floor seconds / logferry seconds: ≥ 1.0 means as fast as the floor).

Each run also times a plain client: this process's confluent-kafka producer sending the same
lines, already in memory, with the output's producer settings (transactions of 1,000 records,
acks=all, idempotence, the same compression, an id header per record) into its own topic. That
is what producing alone costs here, with no tailing, parsing or buffering: the floor above does
not talk to Kafka at all, and on a 2-core machine the broker takes its share of the cores.
Writes benchmarks/results/kafka-<records>-<max_chars>.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import (
    floor_medians,
    group_cpu_seconds,
    machine,
    make_workload,
    print_client_runs,
    print_floor_runs,
    print_header,
    run_floor,
    write_results,
)
from confluent_kafka import Producer
from kafka_clients import produce
from outputs import run_pipeline

from tests.support.kafka import KafkaBroker, TopicReader

#: Records per transaction of the plain client: a chunk of the workload's size holds about this many.
CLIENT_TRANSACTION = 1000


def committed_records(kafka: KafkaBroker, topic: str, expected: int) -> int:
    """Messages a read_committed consumer finds in ``topic`` (reads until ``expected`` or 5 s of nothing)."""
    reader = TopicReader(kafka.bootstrap, topic)
    try:
        idle = 0
        while len(reader.messages) < expected and idle < 10:
            before = len(reader.messages)
            idle = idle + 1 if len(reader.poll()) == before else 0
        return len(reader.messages)
    finally:
        reader.close()


def plain_client(kafka: KafkaBroker, topic: str, workload: Path, compression: str, pgid: int) -> dict[str, float]:
    """The workload's lines produced by a bare transactional producer; wall time and CPU of this process."""
    lines = workload.read_bytes().splitlines()
    return produce(kafka, topic, lines, {"compression.type": compression}, CLIENT_TRANSACTION, pgid)


def warm_up(kafka: KafkaBroker) -> None:
    """A first transaction and group commit before any timing: the broker creates its 50-partition
    ``__transaction_state`` and ``__consumer_offsets`` topics then, not in the first run."""
    kafka.create_topic("warm-up")
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "transactional.id": "warm-up"})
    producer.init_transactions(60)
    producer.begin_transaction()
    producer.produce("warm-up", b"{}")
    producer.commit_transaction(60)
    assert committed_records(kafka, "warm-up", 1) == 1


def bench(root: Path, workload: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with KafkaBroker() as kafka:
        pgid = kafka.pid
        assert pgid is not None
        warm_up(kafka)
        for n in range(args.runs):
            floor = run_floor(workload, root / "floor.out")
            (root / "floor.out").unlink()
            topic = f"bench-{n}"
            kafka.create_topic(topic, partitions=3)
            output = {"type": "kafka", "brokers": [kafka.bootstrap], "topic": topic, "compression": args.compression,
                      "state_topic": "bench-state"}
            buffer = {"chunk_limit_bytes": args.chunk_mib << 20} if args.chunk_mib else {}
            run = run_pipeline(root, workload, "fleet", output, lambda: group_cpu_seconds(pgid),
                               workers=args.workers, buffer=buffer)
            run["committed"] = committed_records(kafka, topic, args.records)
            assert run["committed"] == args.records, f"{run['committed']} records in Kafka, expected {args.records}"
            kafka.create_topic(f"{topic}-plain", partitions=3)
            client = plain_client(kafka, f"{topic}-plain", workload, args.compression, pgid)
            runs.append({"floor": floor, "logferry": run, "client": client,
                         "ratio_to_floor": floor["seconds"] / run["seconds"],
                         "ratio_to_client": client["seconds"] / run["seconds"]})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--max-chars", type=int, default=65536)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compression", default="zstd", choices=["zstd", "lz4", "gzip", "none"])
    ap.add_argument("--workers", type=int, default=1, help="buffer.workers of the output")
    ap.add_argument("--chunk-mib", type=int, default=0,
                    help="buffer.chunk_limit_bytes of the output in MiB (0: its default): one chunk, one transaction")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    info = machine()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-kafka-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    workload = root / "agent.log"
    workload.unlink(missing_ok=True)
    make_workload(workload, args.records, args.max_chars)
    size = workload.stat().st_size
    runs = bench(root, workload, args)
    if args.workdir is None:  # a given one is kept, daemon logs included
        shutil.rmtree(root, ignore_errors=True)
    report = {**info, "records": args.records, "max_chars": args.max_chars, "bytes": size,
              "compression": args.compression, "workers": args.workers, "runs": runs,
              **floor_medians(runs, args.records)}
    print_header("kafka: backlog → tail → kafka output (transactions), next to the floor", info)
    print(f"  workload: {args.records:,} records, {size / 1e6:.0f} MB; compression {args.compression}; "
          f"local Kafka 4.4.0, one broker")
    print_floor_runs(runs, args.records, report, server="Kafka")
    report.update(print_client_runs(runs, args.records, "logferry (tail → buffer → kafka)"))
    write_results(f"kafka-{args.records}-{args.max_chars}", report)


if __name__ == "__main__":
    main()
