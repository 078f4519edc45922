"""``logferry check --connect`` against a real Kafka 4.4.0: what it says of a kafka source and output.

Each problem (an unreachable broker, a missing topic, a state topic that cannot be created,
refused SASL credentials) makes the check exit non-zero with a line naming the component, the
problem and the key; a reachable setup exits 0 and says what it found.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from tests.support.daemon import Layout, render_toml
from tests.support.elasticsearch import free_port
from tests.support.kafka import KafkaBroker

pytestmark = pytest.mark.integration


def write_check_config(layout: Layout, kafka: KafkaBroker, topic: str, source: dict[str, Any] | None = None,
                       output: dict[str, Any] | None = None) -> None:
    """A kafka → kafka configuration (source ``bus``, output ``events``) over ``layout``."""
    connection = {"brokers": [kafka.bootstrap]}
    doc = {
        "state_dir": layout.state,
        "sources": {"bus": {"type": "kafka", "topics": [topic], "group_id": "indexers", "tag": "ai.interactions",
                            **connection, **(source or {})}},
        "outputs": {"events": {"type": "kafka", "topic": topic, "state_topic": f"{topic}-state",
                               "request_timeout": 10.0, **connection, **(output or {})}},
    }
    layout.config.write_text(render_toml(doc))


def check_connect(layout: Layout, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``logferry check --connect`` on the layout's config."""
    return subprocess.run([sys.executable, "-m", "pipeline", "check", "--connect", "-c", str(layout.config)],
                          capture_output=True, text=True, timeout=90, check=False, env={**os.environ, **(env or {})})


@pytest.fixture
def topic(kafka: KafkaBroker) -> str:
    name = f"checked-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(name, partitions=3)
    return name


def test_a_reachable_source_and_output_pass_and_say_what_they_found(layout, kafka, topic):
    write_check_config(layout, kafka, topic)
    checked = check_connect(layout)
    assert checked.returncode == 0, checked.stderr
    assert (f"source bus: Kafka at {kafka.bootstrap} (1 broker): topic {topic} (3 partitions, 1 replica); "
            "group indexers") in checked.stderr
    assert (f"output events: Kafka at {kafka.bootstrap} (1 broker): topic {topic} (3 partitions, 1 replica); "
            f"state topic {topic}-state will be created at start") in checked.stderr
    assert not kafka_topic_exists(kafka, f"{topic}-state"), "a check creates nothing"


def test_an_unreachable_broker_is_named_with_the_key(layout, kafka, topic):
    closed = f"127.0.0.1:{free_port()}"
    write_check_config(layout, kafka, topic, source={"brokers": [closed]}, output={"brokers": [closed]})
    checked = check_connect(layout)
    assert checked.returncode == 1, checked.stderr
    assert f"source bus: cannot reach the brokers {closed}: " in checked.stderr
    assert f"output events: cannot reach the brokers {closed}: " in checked.stderr
    assert "Connection refused" in checked.stderr
    assert "(key sources.bus.brokers)" in checked.stderr and "(key outputs.events.brokers)" in checked.stderr


def test_a_missing_topic_and_a_state_topic_that_cannot_be_created_are_named_with_the_key(layout, kafka, topic):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    write_check_config(layout, kafka, topic, source={"topics": [topic, missing]}, output={"topic": missing})
    checked = check_connect(layout)
    assert checked.returncode == 1, checked.stderr
    assert f"source bus: topic {missing} does not exist on {kafka.bootstrap} (key sources.bus.topics)" \
        in checked.stderr
    assert f"output events: topic {missing} does not exist on {kafka.bootstrap} (key outputs.events.topic)" \
        in checked.stderr

    write_check_config(layout, kafka, topic, output={"state_topic": "no/slashes"})
    checked = check_connect(layout)
    assert checked.returncode == 1, checked.stderr
    assert "output events: the state topic no/slashes does not exist and cannot be created: " in checked.stderr
    assert "(key outputs.events.state_topic)" in checked.stderr
    assert f"source bus: Kafka at {kafka.bootstrap}" in checked.stderr, "the source is fine"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_refused_sasl_credentials_are_named_and_the_password_never_printed(layout, kafka, topic, mechanism):
    user = kafka.scram_user if mechanism == "SCRAM-SHA-512" else kafka.plain_user
    secure = {"brokers": [kafka.secure_bootstrap], "tls": True, "ca_file": str(kafka.ca_file),
              "sasl_mechanism": mechanism, "username": user}
    write_check_config(layout, kafka, topic, source=secure, output=secure)
    wrong = {"LOGFERRY_SOURCES__BUS__PASSWORD": "not-the-password", "LOGFERRY_OUTPUTS__EVENTS__PASSWORD": "nor-this"}
    checked = check_connect(layout, wrong)
    assert checked.returncode == 1, checked.stderr
    refused = f"the brokers {kafka.secure_bootstrap} refused the credentials of {user} ({mechanism}): "
    assert f"source bus: {refused}" in checked.stderr and f"output events: {refused}" in checked.stderr
    assert "(keys sources.bus.username and its password)" in checked.stderr
    assert "(keys outputs.events.username and its password)" in checked.stderr
    assert "not-the-password" not in checked.stdout + checked.stderr
    assert "nor-this" not in checked.stdout + checked.stderr

    right = {"LOGFERRY_SOURCES__BUS__PASSWORD": kafka.password, "LOGFERRY_OUTPUTS__EVENTS__PASSWORD": kafka.password}
    checked = check_connect(layout, right)
    assert checked.returncode == 0, checked.stderr
    assert f"output events: Kafka at {kafka.secure_bootstrap}" in checked.stderr
    assert kafka.password not in checked.stdout + checked.stderr


def kafka_topic_exists(kafka: KafkaBroker, name: str) -> bool:
    from confluent_kafka.admin import AdminClient

    return name in AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10).topics
