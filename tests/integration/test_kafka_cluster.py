"""Kafka failover on a three-node Kafka 4.4.0 cluster: exactly once through kill -9 of logferry and of a broker.

tail → kafka through the kill of a partition leader; kafka → file through the kill of the
consumer group's coordinator.

The cluster (replication factor 3, ``min.insync.replicas = 2``, the transaction state log
likewise) is started once per run, only when this module runs: about 10 s once the jars are
cached (20 s on a loaded machine).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.integration.test_kafka import committed_at_least, write_kafka_config
from tests.integration.test_kafka_source import arrived_at_least, group_offsets, produce, write_source_config
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


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """The module's cluster with all three nodes up, before the test and after it (even a failed one)."""
    kafka_cluster.heal()
    yield kafka_cluster
    kafka_cluster.heal()


def test_sigkill_of_logferry_three_times_and_of_the_partition_leader_then_every_record_is_in_kafka_exactly_once(
    layout, daemon_factory, cluster
):
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
        # Where the kills land: the leader's kill early in the backlog, then 3000 records delivered
        # with its node down before logferry's second kill, the third kill 1000-2000 records later.
        # The second and third are counted from what had arrived at the leader's kill: the reader
        # sees the backlog in bursts, and may be thousands past leader_at when it first looks.
        first, leader_at = rng.randrange(1000, 4000), rng.randrange(5000, 7000)
        write_kafka_config(layout, cluster, topic, **options)

        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(committed_at_least, reader, first), what=f"{first} records before the first kill")
        daemon.kill()

        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(committed_at_least, reader, leader_at), what=f"{leader_at} records before the leader's kill")
        leader = cluster.node(cluster.leader(topic, 0))
        leader.kill()  # kill -9 of the JVM leading partition 0, mid-stream
        second = len(reader.messages) + 3000
        third = second + rng.randrange(1000, 2000)
        assert third < total - 1000, f"{len(reader.messages)} records arrived before the leader's kill: too late"
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


def test_kafka_source_through_a_kill_of_its_group_coordinator_and_of_logferry_takes_every_record_once(
    layout, daemon_factory, cluster
):
    topic, group = f"bus-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    cluster.create_topic(topic, partitions=3)
    values = [line.rstrip(b"\n") for line in generator.lines(12_000, max_chars=600)]
    produce(cluster, topic, values[:8000], partitions=3)
    live = threading.Thread(target=produce, args=(cluster, topic, values[8000:], 3, 100, None, 0.1))
    live.start()  # about 40 messages a second for the rest: records keep coming through both kills
    # A killed member keeps its partitions until its session times out: 6 s, not the default 45 s.
    write_source_config(layout, cluster, topic, group, brokers=[node.bootstrap for node in cluster.nodes],
                        max_batch_messages=300, session_timeout=6.0)
    daemon = new_daemon(layout, daemon_factory).start()
    wait_for(partial(arrived_at_least, layout, 3000), what="3000 records before the coordinator's kill")
    coordinator = cluster.node(cluster.coordinator(group))
    coordinator.kill()  # kill -9 of the broker holding the group's offsets and membership
    wait_for(partial(arrived_at_least, layout, 6000), timeout=90,
             what=f"6000 records with node {coordinator.node_id} down")
    daemon.kill()
    daemon = new_daemon(layout, daemon_factory).start()
    coordinator.restart()  # it rejoins while the daemon consumes
    wait_for(partial(arrived_at_least, layout, 9000), timeout=90, what="9000 records before the second kill")
    daemon.kill()
    live.join(90)
    assert not live.is_alive()
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(arrived_at_least, layout, len(values)), timeout=90, what="every record")
        wait_for(lambda: sum(group_offsets(cluster, topic, group, 3)) == len(values), what="the group's offsets")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(len(values))], layout.records()).assert_exact()


def read_until(reader: TopicReader, count: int, timeout: float) -> None:
    """Read until ``count`` messages have arrived, or for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while len(reader.poll()) < count and time.monotonic() < deadline:
        pass  # each poll waits up to half a second for messages
