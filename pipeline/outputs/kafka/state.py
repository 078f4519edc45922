"""Chunk markers in the state topic: which chunks a producer has already delivered.

The state topic is compacted. Each producer (one ``transactional.id``: one host's output)
owns one key, always written to the partition ``crc32(key) % partitions``; its value is
the marker::

    {"chunks": ["<chunk_id>", ...], "time": <epoch seconds>}

the ids of the chunks delivered by this producer that were still in its buffer when the
marker was written (a delivered chunk is deleted right after: the list stays short). The
marker is produced inside the chunk's own transaction, so it is committed exactly when
the chunk's records are (the way Kafka Connect's exactly-once source connectors keep
their offsets, KIP-618).

At start, ``init_transactions`` fences the killed predecessor and completes or aborts its
open transaction; then :func:`read_delivered` reads the partition with read_committed up
to the end it had then. A chunk named in the last marker is already in Kafka: the output
skips it. Compaction keeps one marker per producer, so this read stays short.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

#: Settings of a state topic created by logferry.
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1"}


class StateReadError(RuntimeError):
    """The state topic could not be read to its end in time."""


def marker_partition(key: str, partitions: int) -> int:
    """The partition of the state topic a producer's markers go to.

    >>> marker_partition("logferry-host-1-kafka", 1), 0 <= marker_partition("x", 3) < 3
    (0, True)
    """
    return zlib.crc32(key.encode()) % partitions


def marker_value(chunks: Iterable[str], now: float) -> bytes:
    """The marker naming ``chunks``.

    >>> marker_value(["b", "a"], 5.0)
    b'{"chunks":["a","b"],"time":5.0}'
    """
    return orjson.dumps({"chunks": sorted(chunks), "time": now})


def parse_marker(value: bytes | None) -> set[str]:
    """The chunk ids a marker names (none for a tombstone or a foreign value).

    >>> sorted(parse_marker(b'{"chunks":["a","b"],"time":5.0}')), parse_marker(None), parse_marker(b"x")
    (['a', 'b'], set(), set())
    """
    try:
        doc: Any = orjson.loads(value) if value else {}
    except orjson.JSONDecodeError:
        return set()
    chunks = doc.get("chunks") if isinstance(doc, dict) else None
    return {str(c) for c in chunks} if isinstance(chunks, list) else set()


def read_delivered(settings: dict[str, Any], topic: str, partition: int, key: str, timeout: float) -> set[str]:
    """The chunks of the last committed marker of ``key`` (blocking; a worker thread).

    Reads ``partition`` with read_committed from its start to the end it has now; that end is
    only reached once every transaction open before it is over, so no committed marker is missed.
    """
    consumer = Consumer({
        **settings, "group.id": f"{key}.state-reader", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest",
    })  # fmt: skip
    try:
        tp = TopicPartition(topic, partition, OFFSET_BEGINNING)
        _, end = consumer.get_watermark_offsets(tp, timeout=timeout)
        if end <= 0:
            return set()
        consumer.assign([tp])
        return _consume_to(consumer, end, key.encode(), time.monotonic() + timeout)
    finally:
        consumer.close()


def _consume_to(consumer: Consumer, end: int, key: bytes, deadline: float) -> set[str]:
    """The last marker of ``key`` among the partition's messages before ``end``."""
    delivered: set[str] = set()
    while time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                if (message.offset() or 0) >= end:
                    return delivered
                continue
            if message.key() == key:
                delivered = parse_marker(message.value())
    raise StateReadError(f"the state topic was not read to offset {end} in time")
