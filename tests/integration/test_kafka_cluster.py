"""tail → kafka against a three-node Kafka 4.4.0 cluster: exactly once through kill -9 of logferry and of a leader.

The cluster (replication factor 3, ``min.insync.replicas = 2``, the transaction state log
likewise) is started once per run, only when this module runs: about 10 s once the jars are
cached (20 s on a loaded machine).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.integration.test_kafka import committed_at_least, write_kafka_config
from tests.support.daemon import Ledger, wait_for
from tests.support.kafka import KafkaCluster, TopicReader
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """The run's three-node KRaft cluster, started when this module runs and stopped after it.

    Once per run, as only this module asks for it; not kept for the whole session, because its
    three idle JVMs take about a tenth of a core (heartbeats) through every module after this one.
    A second module needing it would move it to conftest.py with ``scope="session"``.
    """
    with KafkaCluster() as cluster:
        yield cluster


def test_sigkill_of_logferry_three_times_and_of_the_partition_leader_then_every_record_is_in_kafka_exactly_once(
    layout, daemon_factory, kafka_cluster
):
    cluster = kafka_cluster
    topic = f"fleet-{uuid.uuid4().hex[:8]}"
    cluster.create_topic(topic, partitions=3)
    brokers = [node.bootstrap for node in cluster.nodes]  # every node: the daemon must bootstrap with one down
    rng = random.Random(20261205)
    backlog, live = 12_000, 8000
    total = backlog + live
    generator.write(str(layout.logs / "agent.log"), backlog, max_chars=800)
    writer = AgentWriter(layout.logs / "agent.log", live, start=backlog, pause=0.005, max_chars=800)
    # Small chunks and quick flushes: a transaction is open at almost any moment a kill lands.
    options: dict[str, Any] = {"brokers": brokers, "key_field": "model", "request_timeout": 15.0,
               "buffer": {"chunk_limit_bytes": 256 * 1024, "flush_interval": 0.05}}
    reader = TopicReader(cluster.bootstrap, topic)
    try:
        writer.start()
        first, leader_at, second, third = sorted(rng.sample(range(1000, total - 2000), 4))
        write_kafka_config(layout, cluster, topic, **options)

        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(committed_at_least, reader, first), what=f"{first} records before the first kill")
        daemon.kill()

        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(committed_at_least, reader, leader_at), what=f"{leader_at} records before the leader's kill")
        leader = cluster.node(cluster.leader(topic, 0))
        leader.kill()  # kill -9 of the JVM leading partition 0, mid-stream
        assert len(reader.messages) < total, "the leader is killed with records still to deliver"
        wait_for(partial(committed_at_least, reader, second), timeout=90,
                 what=f"{second} records with node {leader.node_id} down")
        daemon.kill()

        daemon = new_daemon(layout, daemon_factory).start()
        leader.restart()  # it rejoins while the daemon produces
        wait_for(partial(committed_at_least, reader, third), timeout=90, what=f"{third} records before the third kill")
        daemon.kill()

        writer.join(60)
        assert writer.error is None
        with new_daemon(layout, daemon_factory) as daemon:
            read_until(reader, total, timeout=90)  # a record lost is named by the ledger below, not by a timeout
            assert daemon.stop() == 0
        reader.poll(2.0)  # anything produced twice would have arrived by now
        records = reader.records()
    finally:
        reader.close()
    Ledger.compare([generator.request_id(1, n) for n in range(total)], records).assert_exact()
    assert all(r["_headers"]["logferry.id"] == r["request_id"] for r in records), "the id travels in a header"
    cluster.wait_for_brokers(KafkaCluster.SIZE)  # the restarted node is back for whoever uses the cluster next


def read_until(reader: TopicReader, count: int, timeout: float) -> None:
    """Read until ``count`` messages have arrived, or for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while len(reader.poll()) < count and time.monotonic() < deadline:
        pass  # each poll waits up to half a second for messages
