#!/usr/bin/env python3
"""What Kafka itself costs here: bare confluent-kafka clients over the workload, per client setting.

  .venv/bin/python benchmarks/kafka_clients.py                 # both sides, 100,000 typical records, 2 rounds
  .venv/bin/python benchmarks/kafka_clients.py --side produce  # transactional producers only
  .venv/bin/python benchmarks/kafka_clients.py --side consume --pace 8

No logferry here: the yardstick for ``kafka.py`` and ``kafka_source.py``. On a machine that also runs
the broker, these say how close to the floor any client can get, and which setting moves it.

* produce: each setting's transactional producer (acks=all, idempotence, the kafka output's batch
  size and linger, an id header per message) sends the workload's lines from memory into a fresh
  topic of 3 partitions, ``--transaction`` records a transaction unless the setting says otherwise.
* consume: the lines produced once (zstd), then each setting's read_committed consumer takes them all
  as the kafka source does (``consume(1000, 0)``, waiting for a first message only when none is
  queued); ``--pace MS`` sleeps MS milliseconds per 1,000 messages taken, as if a pipeline processed
  them, which shows whether the fetcher keeps the queue filled meanwhile (``empty waits``).

Rounds alternate the settings. Reports records/s, this process's CPU (librdkafka's threads included)
and the broker's over the same window. Writes benchmarks/results/kafka-clients-<side>.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common import group_cpu_seconds, machine, make_workload, print_header, write_results
from confluent_kafka import Consumer, Producer
from kafka_source import TOPIC, produce_workload, warm_up

from pipeline.outputs.kafka.encoder import RECORD_OVERHEAD
from pipeline.outputs.kafka.output import MAX_BATCH_BYTES
from pipeline.sources.kafka.source import FETCH_BYTES, QUEUED_BYTES
from tests.support.kafka import KafkaBroker

MiB = 1 << 20
#: Producer settings over the output's (``_transaction``: records a transaction).
PRODUCE: dict[str, dict[str, Any]] = {
    "output (zstd)": {},
    "lz4": {"compression.type": "lz4"},
    "none": {"compression.type": "none"},
    "zstd level 1": {"compression.level": 1},
    "5,000 a transaction": {"_transaction": 5000},
    "linger 50 ms": {"linger.ms": 50},
}
#: Consumer settings over the source's fetch and queue bounds.
CONSUME: dict[str, dict[str, Any] | None] = {
    "source (2+2 MiB)": {},
    "fetch 4 MiB": {"fetch.max.bytes": 4 * MiB, "max.partition.fetch.bytes": 4 * MiB},
    "queue 8 MiB": {"queued.max.messages.kbytes": 8 * 1024},
    "fetch 8, queue 8 MiB": {"fetch.max.bytes": 8 * MiB, "max.partition.fetch.bytes": 8 * MiB,
                             "queued.max.messages.kbytes": 8 * 1024},
    "librdkafka defaults": None,  # every fetch and queue setting at librdkafka's own default
}


def produce(kafka: KafkaBroker, topic: str, lines: list[bytes], setting: dict[str, Any], per_transaction: int,
            pgid: int) -> dict[str, float]:
    """``lines`` through one transactional producer; wall time, this process's CPU and the broker's."""
    extra = dict(setting)
    per_transaction = extra.pop("_transaction", per_transaction)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "transactional.id": f"bench-{topic}",
                         "enable.idempotence": True, "acks": "all", "compression.type": "zstd", "linger.ms": 5,
                         "batch.size": MAX_BATCH_BYTES - RECORD_OVERHEAD, "queue.buffering.max.kbytes": 256 * 1024,
                         **extra})
    producer.init_transactions(60)
    server0, cpu0, start = group_cpu_seconds(pgid), time.process_time(), time.perf_counter()
    for first in range(0, len(lines), per_transaction):
        producer.begin_transaction()
        for n, line in enumerate(lines[first:first + per_transaction], first):
            headers: list[tuple[str, str | bytes | None]] = [("logferry-id", str(n).encode())]
            while True:
                try:
                    producer.produce(topic, line, headers=headers)
                    break
                except BufferError:  # the local queue is full
                    producer.poll(0.05)
        producer.commit_transaction(60)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu_s": time.process_time() - cpu0, "server_cpu_s": group_cpu_seconds(pgid) - server0}


def consume(kafka: KafkaBroker, topic: str, records: int, setting: dict[str, Any] | None, pace: float,
            pgid: int) -> dict[str, float]:
    """Every message of ``topic`` in a fresh group, timed from the first message; empty-queue waits counted."""
    bounds = {} if setting is None else {"fetch.max.bytes": FETCH_BYTES, "max.partition.fetch.bytes": FETCH_BYTES,
                                         "queued.max.messages.kbytes": QUEUED_BYTES // 1024,
                                         "fetch.queue.backoff.ms": 10, **setting}
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"bench-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "enable.auto.offset.store": False, "isolation.level": "read_committed", **bounds})
    consumer.subscribe([topic])
    seen = empty = 0
    waited = 0.0
    start = cpu0 = server0 = None
    try:
        while seen < records:
            batch = consumer.consume(1000, 0)
            if not batch:
                began = time.perf_counter()
                batch = consumer.consume(1, 0.2)
                if start is not None:
                    empty += 1
                    waited += time.perf_counter() - began
                if batch:
                    batch += consumer.consume(999, 0)
            got = sum(1 for m in batch if m.error() is None)
            if got and start is None:
                start, cpu0, server0 = time.perf_counter(), time.process_time(), group_cpu_seconds(pgid)
            seen += got
            if got and pace:
                time.sleep(pace / 1000 * got / 1000)
        assert start is not None and cpu0 is not None and server0 is not None
        return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu0,
                "server_cpu_s": group_cpu_seconds(pgid) - server0, "empty_waits": empty, "waited_s": waited}
    finally:
        consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--max-chars", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--side", choices=("both", "produce", "consume"), default="both")
    ap.add_argument("--transaction", type=int, default=1000, help="records a transaction (produce)")
    ap.add_argument("--pace", type=float, default=0.0, help="ms slept per 1,000 messages taken (consume)")
    args = ap.parse_args()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="logferry-kafka-clients-"))
    workload = root / "agent.log"
    make_workload(workload, args.records, args.max_chars)
    lines = workload.read_bytes().splitlines()
    results: dict[str, dict[str, list[dict[str, float]]]] = {"produce": {}, "consume": {}}
    try:
        with KafkaBroker() as kafka:
            pgid = kafka.pid
            assert pgid is not None
            if args.side != "produce":
                assert produce_workload(kafka, workload) == args.records
            warm_up(kafka)
            for n in range(args.rounds):
                if args.side != "consume":
                    for index, (name, setting) in enumerate(PRODUCE.items()):
                        topic = f"produce-{n}-{index}"
                        kafka.create_topic(topic, partitions=3)
                        run = produce(kafka, topic, lines, setting, args.transaction, pgid)
                        results["produce"].setdefault(name, []).append(run)
                if args.side != "produce":
                    for name, bounds in CONSUME.items():
                        run = consume(kafka, TOPIC, args.records, bounds, args.pace, pgid)
                        results["consume"].setdefault(name, []).append(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_header("kafka clients: bare confluent-kafka producers and consumers over the workload", info)
    print(f"  workload: {args.records:,} records, {workload_mb(lines):.0f} MB; local Kafka 4.4.0, one broker; "
          f"{args.rounds} rounds")
    for side, runs in results.items():
        if not runs:
            continue
        extra = f", paced {args.pace:g} ms per 1,000" if side == "consume" and args.pace else ""
        print(f"\n  {side}{extra}: rec/s per round (client CPU-s, broker CPU-s"
              f"{', empty waits / s waited' if side == 'consume' else ''})")
        for name, series in runs.items():
            cells = []
            for run in series:
                cell = f"{args.records / run['seconds']:9,.0f} ({run['cpu_s']:.2f}, {run['server_cpu_s']:.2f}"
                if side == "consume":
                    cell += f", {run['empty_waits']:.0f} / {run['waited_s']:.2f}"
                cells.append(cell + ")")
            print(f"  {name:24s} " + "   ".join(cells))
        write_results(f"kafka-clients-{side}", {**info, "records": args.records, "max_chars": args.max_chars,
                                                "pace_ms": args.pace, "runs": runs})


def workload_mb(lines: list[bytes]) -> float:
    """The workload's size in MB (its lines with their newlines)."""
    return (sum(map(len, lines)) + len(lines)) / 1e6


if __name__ == "__main__":
    main()
