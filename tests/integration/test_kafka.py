"""tail → kafka against a real Kafka 4.4.0 broker: exactly once through kill -9, ids in headers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Layout, Ledger, render_toml, wait_for
from tests.support.elasticsearch import free_port
from tests.support.kafka import KafkaBroker, KafkaCluster, TopicReader
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration


def write_kafka_config(layout: Layout, kafka: KafkaBroker | KafkaCluster, topic: str,
                       buffer: dict[str, Any] | None = None, **output: Any) -> None:
    """A tail → kafka pipeline over ``layout``."""
    doc = {
        "state_dir": layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.5}},
        "outputs": {"events": {"type": "kafka", "brokers": [kafka.bootstrap], "topic": topic,
                               "state_topic": f"{topic}-state", "request_timeout": 10.0, **output,
                               "buffer": {"flush_interval": 0.2, "retry_wait": 0.2, "retry_max_interval": 1.0,
                                          **(buffer or {})}}},
    }
    layout.config.write_text(render_toml(doc))


@pytest.fixture
def topic(kafka: KafkaBroker) -> str:
    name = f"agents-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(name, partitions=3)
    return name


@pytest.fixture
def reader(kafka: KafkaBroker, topic: str) -> Iterator[TopicReader]:
    consumer = TopicReader(kafka.bootstrap, topic)
    yield consumer
    consumer.close()


def committed_at_least(reader: TopicReader, count: int) -> bool:
    return len(reader.poll()) >= count


@pytest.mark.parametrize("workers", [(1, 1, 1, 1), (2, 2, 1, 1)], ids=["one-producer", "two-then-one"])
def test_sigkill_three_times_then_every_record_is_in_kafka_exactly_once(
    layout, daemon_factory, kafka, topic, reader, workers
):
    # Small chunks and quick flushes keep a transaction open at almost any moment a kill lands.
    # "two-then-one": two producers (two chunks in flight) for the first two runs, then one: the
    # second producer's open transaction is fenced by the next runs and its markers still count.
    rng = random.Random(20261204)
    backlog, live = 15_000, 5000
    generator.write(str(layout.logs / "agent.log"), backlog, max_chars=800)
    writer = AgentWriter(layout.logs / "agent.log", live, start=backlog, pause=0.001, max_chars=800)
    writer.start()
    total = backlog + live
    for run, kill_at in enumerate(sorted(rng.sample(range(1000, total - 1000), 3))):
        write_kafka_config(layout, kafka, topic, key_field="model",
                           buffer={"chunk_limit_bytes": 256 * 1024, "flush_interval": 0.05, "workers": workers[run]})
        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(committed_at_least, reader, kill_at), what=f"{kill_at} records before the kill")
        daemon.kill()
    writer.join(60)
    assert writer.error is None
    write_kafka_config(layout, kafka, topic, key_field="model", buffer={"workers": workers[3]})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(committed_at_least, reader, total), timeout=90, what="every record after the restarts")
        assert daemon.stop() == 0
    reader.poll(2.0)  # anything produced twice would have arrived by now
    records = reader.records()
    Ledger.compare([generator.request_id(1, n) for n in range(total)], records).assert_exact()
    assert all(r["_headers"]["logferry.id"] == r["request_id"] for r in records), "the id travels in a header"
    assert all(r["_key"] == r["model"] for r in records), "key_field keys each message"


def records_and_a_dead_letter(layout: Layout, daemon_factory: Any, kafka: KafkaBroker, topic: str,
                              count: int) -> list[dict[str, Any]]:
    """Run the daemon until ``topic`` holds ``count`` committed records and a dead letter is written; the records."""
    reader = TopicReader(kafka.bootstrap, topic)
    try:
        with new_daemon(layout, daemon_factory) as daemon:
            wait_for(partial(committed_at_least, reader, count), what=f"the {count} records that fit")
            wait_for(layout.dead_letters, what="the dead letter")
            assert daemon.stop() == 0
        return reader.records()
    finally:
        reader.close()


def test_a_record_over_max_message_bytes_is_dead_lettered_and_its_chunk_delivered(layout, daemon_factory, kafka):
    small = f"small-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(small, config={"max.message.bytes": "20000"})
    write_kafka_config(layout, kafka, small, compression="lz4")
    lines = list(generator.lines(20, max_chars=400))
    big = orjson.dumps({"request_id": "too-big", "input": "x" * 50_000}) + b"\n"
    (layout.logs / "agent.log").write_bytes(b"".join(lines[:10]) + big + b"".join(lines[10:]))
    arrived = records_and_a_dead_letter(layout, daemon_factory, kafka, small, 20)
    Ledger.compare([generator.request_id(1, n) for n in range(20)], arrived).assert_exact()
    [entry] = layout.dead_letters()
    assert entry["record_id"] == "too-big" and "max.message.bytes" in entry["reason"]
    assert entry["length"] > 50_000 and orjson.loads(entry["line"])["request_id"] == "too-big"
    assert entry["output"] == "events"
    assert not layout.buffered_chunks("events"), "the chunk was delivered, not held back"


def test_a_record_over_a_megabyte_goes_through_when_the_topic_takes_it(layout, daemon_factory, kafka):
    """librdkafka refuses records over its message.max.bytes (1,000,000 by default) before sending: the
    producer takes the topic's max.message.bytes, so only records over that are dead-lettered."""
    roomy = f"roomy-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(roomy, config={"max.message.bytes": "3000000"})
    write_kafka_config(layout, kafka, roomy)
    lines = list(generator.lines(4, max_chars=400))
    large = orjson.dumps({"request_id": "large", "input": "y" * 2_000_000}) + b"\n"
    too_large = orjson.dumps({"request_id": "too-large", "input": "z" * 3_100_000}) + b"\n"
    (layout.logs / "agent.log").write_bytes(b"".join([lines[0], lines[1], large, lines[2], too_large, lines[3]]))
    arrived = records_and_a_dead_letter(layout, daemon_factory, kafka, roomy, 5)
    Ledger.compare([*(generator.request_id(1, n) for n in range(4)), "large"], arrived).assert_exact()
    assert next(r for r in arrived if r["request_id"] == "large")["input"] == "y" * 2_000_000
    [entry] = layout.dead_letters()
    assert entry["record_id"] == "too-large" and "max.message.bytes" in entry["reason"]


def test_a_missing_topic_is_named_in_status_and_delivery_resumes_once_it_exists(layout, daemon_factory, kafka):
    later = f"later-{uuid.uuid4().hex[:8]}"
    write_kafka_config(layout, kafka, later)
    generator.write(str(layout.logs / "agent.log"), 50)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: f"topic {later} does not exist" in daemon.log(), what="the missing topic in the log")
        _, body = layout.http("/status")
        assert f"topic {later} does not exist" in body.decode()
        kafka.create_topic(later)
        late_reader = TopicReader(kafka.bootstrap, later)
        try:
            wait_for(partial(committed_at_least, late_reader, 50), what="delivery once the topic exists")
        finally:
            late_reader.close()
        assert daemon.stop() == 0


def test_a_chunk_committed_but_not_yet_deleted_at_a_crash_is_skipped_at_restart(layout, daemon_factory, kafka):
    # The moment a kill -9 can land between a chunk's commit in Kafka and its deletion from the
    # buffer, made certain: the chunk is held back (its topic does not exist yet), copied, then
    # delivered and deleted; the copy is put back as if the deletion had never happened.
    name = f"replayed-{uuid.uuid4().hex[:8]}"
    write_kafka_config(layout, kafka, name)
    generator.write(str(layout.logs / "agent.log"), 50)
    with new_daemon(layout, daemon_factory) as daemon:
        queued = wait_for(lambda: [p for p in layout.buffered_chunks("events") if p.suffix == ".queued"],
                          what="the chunk queued while the topic is missing")
        saved = {path: path.read_bytes() for path in queued}
        kafka.create_topic(name)
        wait_for(lambda: not layout.buffered_chunks("events"), what="the chunk delivered and deleted")
        assert daemon.stop() == 0
    for path, data in saved.items():
        path.write_bytes(data)
    reader = TopicReader(kafka.bootstrap, name)
    try:
        with new_daemon(layout, daemon_factory) as daemon:
            wait_for(lambda: "already in Kafka" in daemon.log(), what="the chunk recognised by its marker")
            wait_for(lambda: not layout.buffered_chunks("events"), what="the skipped chunk deleted")
            assert daemon.stop() == 0
        reader.poll(2.0)
        Ledger.compare([generator.request_id(1, n) for n in range(50)], reader.records()).assert_exact()
    finally:
        reader.close()


def secure_options(kafka: KafkaBroker, mechanism: str, user: str, **secret: Any) -> dict[str, Any]:
    return {"brokers": [kafka.secure_bootstrap], "tls": True, "ca_file": str(kafka.ca_file),
            "sasl_mechanism": mechanism, "username": user, **secret}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_tls_and_sasl_with_the_password_from_a_file_or_the_environment(
    layout, daemon_factory, kafka, topic, reader, mechanism
):
    user = kafka.scram_user if mechanism == "SCRAM-SHA-512" else kafka.plain_user
    env: dict[str, str] = {}
    if mechanism == "SCRAM-SHA-512":
        secret = layout.root / "kafka.password"
        secret.write_text(kafka.password + "\n")
        options = secure_options(kafka, mechanism, user, password_file=str(secret))
    else:
        options = secure_options(kafka, mechanism, user)
        env = {"LOGFERRY_OUTPUTS__EVENTS__PASSWORD": kafka.password}
    write_kafka_config(layout, kafka, topic, **options)
    generator.write(str(layout.logs / "agent.log"), 100)
    with new_daemon(layout, daemon_factory, env) as daemon:
        wait_for(partial(committed_at_least, reader, 100), what=f"records over TLS with SASL {mechanism}")
        _, status = layout.http("/status")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(100)], reader.records()).assert_exact()
    assert kafka.password not in daemon.log() and kafka.password not in status.decode()


def test_refused_credentials_and_an_unreachable_broker_are_named_in_status(layout, daemon_factory, kafka, topic):
    write_kafka_config(layout, kafka, topic, **secure_options(kafka, "SCRAM-SHA-512", kafka.scram_user),
                       request_timeout=3.0)
    generator.write(str(layout.logs / "agent.log"), 10)
    env = {"LOGFERRY_OUTPUTS__EVENTS__PASSWORD": "not-the-password"}
    with new_daemon(layout, daemon_factory, env) as daemon:
        wait_for(lambda: "refused the credentials of ferry-scram" in layout.http("/status")[1].decode(),
                 what="the refused credentials in status")
        assert_unhealthy_because(layout, "output events: start: the brokers "
                                 f"{kafka.secure_bootstrap} refused the credentials of ferry-scram", env)
        assert daemon.stop() == 0
    assert "not-the-password" not in daemon.log()
    closed = free_port()
    write_kafka_config(layout, kafka, topic, brokers=[f"127.0.0.1:{closed}"], request_timeout=2.0)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: f"cannot reach the brokers 127.0.0.1:{closed}" in layout.http("/status")[1].decode(),
                 what="the unreachable broker in status")
        assert_unhealthy_because(layout, f"output events: start: cannot reach the brokers 127.0.0.1:{closed}")
        assert daemon.stop() == 0


def assert_unhealthy_because(layout: Layout, problem: str, env: dict[str, str] | None = None) -> None:
    """/health answers 503 naming ``problem`` at once (not after output_failing_after), and so does status."""
    code, body = layout.http("/health")
    assert code == 503 and any(p.startswith(problem) for p in orjson.loads(body)["problems"]), body
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                            capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})})
    assert f"problem: {problem}" in status.stdout, status.stdout + status.stderr
