"""``logferry check --connect`` for a kafka source: brokers, credentials and every topic it consumes.

The brokers are asked for their metadata with the source's own connection settings (see
:func:`pipeline.outputs.kafka.probe.cluster_metadata`); the consumer group is not joined,
so a check never takes partitions away from a running indexer.
"""

from __future__ import annotations

import asyncio

from pipeline.errors import RetryableError
from pipeline.outputs.kafka.probe import cluster_metadata, counted, describe_topic
from pipeline.sources.kafka.config import KafkaSourceConfig

TIMEOUT_SECONDS = 10.0


async def probe(name: str, config: KafkaSourceConfig) -> str:
    """What the brokers say about the source's topics; RetryableError naming the key when something is wrong."""
    return await asyncio.to_thread(_probe, name, config)


def _probe(name: str, config: KafkaSourceConfig) -> str:
    where = f"sources.{name}"
    _, metadata = cluster_metadata(config, where, TIMEOUT_SECONDS)
    brokers = ",".join(config.brokers)
    missing = [t for t in config.topics if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
        named = f"topic {missing[0]} does not" if len(missing) == 1 else f"topics {', '.join(missing)} do not"
        raise RetryableError(f"{named} exist on {brokers} (key {where}.topics)")
    topics = "; ".join(f"topic {t} ({describe_topic(metadata.topics[t])})" for t in config.topics)
    return f"Kafka at {brokers} ({counted(len(metadata.brokers), 'broker')}): {topics}; group {config.group_id}"
