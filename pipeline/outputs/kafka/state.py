"""Chunk markers in the state topic: which chunks a producer has already delivered.

The state topic is compacted. Each producer (one ``transactional.id``: one of a host's
output's ``workers``, :func:`slot_key`) owns one key; an output's keys are all written to the
partition ``crc32(base id) % partitions``; a key's value is the marker::

    {"chunks": ["<chunk_id>", ...], "time": <epoch seconds>}

the ids of the chunks delivered by this producer that were still in its buffer when the
marker was written (a delivered chunk is deleted right after: the list stays short). The
marker is produced inside the chunk's own transaction, so it is committed exactly when
the chunk's records are (the way Kafka Connect's exactly-once source connectors keep
their offsets, KIP-618).

At start, ``init_transactions`` fences the killed predecessor and completes or aborts its
open transaction; then :func:`read_markers` reads the partition with read_committed up
to the end it had then. A chunk named in a producer's last marker is already in Kafka:
the output skips it. Compaction keeps one marker per producer, so this read stays short.
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


def slot_key(base: str, slot: int) -> str:
    """The ``transactional.id`` (and marker key) of producer ``slot`` of an output.

    >>> slot_key("logferry-web-1-fleet", 0), slot_key("logferry-web-1-fleet", 2)
    ('logferry-web-1-fleet', 'logferry-web-1-fleet#2')
    """
    return base if slot == 0 else f"{base}#{slot}"


def is_slot_key(base: str, key: str) -> bool:
    """Whether ``key`` is one of the output's producers (any slot, also of an earlier ``workers``).

    >>> [is_slot_key("a-b", k) for k in ("a-b", "a-b#3", "a-b-c", "a-b#x")]
    [True, True, False, False]
    """
    return key == base or (key.startswith(base + "#") and key[len(base) + 1:].isdigit())


def read_markers(
    settings: dict[str, Any], topic: str, partition: int, base: str, timeout: float
) -> dict[str, set[str]]:
    """The chunks of the last committed marker of each of the output's producers (blocking; a worker thread).

    Reads ``partition`` with read_committed from its start to the end it has now; that end is
    only reached once every transaction open before it is over, so no committed marker is missed.
    """
    consumer = Consumer({
        **settings, "group.id": f"{base}.state-reader", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest",
    })  # fmt: skip
    try:
        tp = TopicPartition(topic, partition, OFFSET_BEGINNING)
        _, end = consumer.get_watermark_offsets(tp, timeout=timeout)
        if end <= 0:
            return {}
        consumer.assign([tp])
        return _consume_to(consumer, end, base, time.monotonic() + timeout)
    finally:
        consumer.close()


def _consume_to(consumer: Consumer, end: int, base: str, deadline: float) -> dict[str, set[str]]:
    """The last marker of each producer of ``base`` among the partition's messages before ``end``."""
    markers: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                if (message.offset() or 0) >= end:
                    return markers
                continue
            key = (message.key() or b"").decode(errors="replace")
            if is_slot_key(base, key):
                markers[key] = parse_marker(message.value())
    raise StateReadError(f"the state topic was not read to offset {end} in time")
