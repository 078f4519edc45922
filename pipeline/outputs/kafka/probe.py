"""``logferry check --connect`` for a kafka output: brokers, credentials, topic and state topic.

Asks the brokers for their metadata with the output's own connection settings, then looks
for the topic and the state topic. Nothing is produced and nothing is created: a missing
state topic is only validated (``validate_only``), so the check also says whether the
output will be able to create it at start. Every failure names the key to look at.

:func:`cluster_metadata` is shared with the kafka source's probe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pipeline.errors import RetryableError
from pipeline.outputs.kafka.client import ClientErrors, client_settings
from pipeline.outputs.kafka.config import KafkaConnection, KafkaOutputConfig
from pipeline.outputs.kafka.state import STATE_TOPIC_CONFIG


async def probe(name: str, config: KafkaOutputConfig) -> str:
    """What the brokers say about the output's topics; RetryableError naming the key when something is wrong."""
    return await asyncio.to_thread(_probe, name, config)


def _probe(name: str, config: KafkaOutputConfig) -> str:
    where = f"outputs.{name}"
    admin, metadata = cluster_metadata(config, where, config.request_timeout)
    brokers = ",".join(config.brokers)
    topic = metadata.topics.get(config.topic)
    if topic is None or topic.error is not None:
        raise RetryableError(f"topic {config.topic} does not exist on {brokers} (key {where}.topic)")
    found = counted(len(metadata.brokers), "broker")
    return (f"Kafka at {brokers} ({found}): topic {config.topic} ({describe_topic(topic)}); "
            f"{_state_topic(admin, metadata, config, where)}")


def _state_topic(admin: AdminClient, metadata: Any, config: KafkaOutputConfig, where: str) -> str:
    """The state topic as found, or whether the output may create it (asked with ``validate_only``)."""
    state = metadata.topics.get(config.state_topic)
    if state is not None and state.error is None:
        return f"state topic {config.state_topic} ({describe_topic(state)})"
    topic = NewTopic(config.state_topic, 1, replication_factor=-1, config=STATE_TOPIC_CONFIG)
    try:
        admin.create_topics([topic], validate_only=True)[config.state_topic].result(config.request_timeout)
    except KafkaException as exc:
        raise RetryableError(f"the state topic {config.state_topic} does not exist and cannot be created: "
                             f"{exc.args[0].str()} (key {where}.state_topic)") from exc
    except TimeoutError as exc:
        raise RetryableError(f"the state topic {config.state_topic} does not exist, and the brokers did not say "
                             f"within {config.request_timeout:g}s whether it can be created") from exc
    return f"state topic {config.state_topic} will be created at start"


def describe_topic(topic: Any) -> str:
    """Partitions and replicas of a topic's metadata, e.g. ``3 partitions, 3 replicas``."""
    partitions = topic.partitions
    replicas = len(next(iter(partitions.values())).replicas) if partitions else 0
    return f"{counted(len(partitions), 'partition')}, {counted(replicas, 'replica')}"


def counted(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless one.

    >>> counted(1, "partition"), counted(3, "replica")
    ('1 partition', '3 replicas')
    """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cluster_metadata(config: KafkaConnection, where: str, timeout: float) -> tuple[AdminClient, Any]:
    """An admin client and the cluster's metadata, as ``config`` connects (blocking: a worker thread).

    RetryableError names what failed and the key (``where`` is ``outputs.NAME`` or ``sources.NAME``):
    an unreadable password file, refused credentials, or brokers that cannot be reached. It comes
    as soon as librdkafka says so (every broker down, credentials refused), not at ``timeout``.
    """
    errors = _CheckErrors()
    try:
        settings = client_settings(config, "logferry-check", errors)
    except OSError as exc:
        raise RetryableError(f"cannot read {exc.filename}: {exc.strerror} (key {where}.password_file)") from exc
    admin = AdminClient({**settings, "log_level": 0})  # the line it prints says what librdkafka logs would
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin, admin.list_topics(timeout=min(1.0, max(deadline - time.monotonic(), 0.1)))
        except KafkaException as exc:
            admin.poll(0)  # hands the reason behind "transport failure" to ``errors``
            if errors.settled() or time.monotonic() >= deadline:
                raise RetryableError(_unreachable(config, where, errors, exc.args[0])) from exc


class _CheckErrors(ClientErrors):
    """The client's errors, and whether librdkafka has said every broker is down."""

    def __init__(self) -> None:
        super().__init__()
        self.all_down = False

    def __call__(self, error: KafkaError) -> None:
        """Keep the error (see :class:`ClientErrors`) and note "all brokers down"."""
        self.all_down = self.all_down or error.code() == KafkaError._ALL_BROKERS_DOWN
        super().__call__(error)

    def settled(self) -> bool:
        """Whether waiting longer cannot change the answer: credentials refused, or no broker answering."""
        return self.refused_credentials() or (self.all_down and self.last is not None)


def _unreachable(config: KafkaConnection, where: str, errors: ClientErrors, error: Any) -> str:
    brokers, last = ",".join(config.brokers), errors.last
    if errors.refused_credentials() and last is not None:
        return (f"the brokers {brokers} refused the credentials of {config.username} ({config.sasl_mechanism}): "
                f"{last.str()} (keys {where}.username and its password)")
    return f"cannot reach the brokers {brokers}: {(last or error).str()} (key {where}.brokers)"
