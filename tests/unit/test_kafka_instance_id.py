"""The kafka source's static member id (``instance_id``): its default, and the values the config refuses."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline.sources.kafka.config import KafkaSourceConfig
from pipeline.sources.kafka.source import default_instance_id, instance_id

LEGAL = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's JoinGroupRequest.validateGroupInstanceId


def config(**keys: Any) -> KafkaSourceConfig:
    return KafkaSourceConfig.model_validate(
        {"type": "kafka", "brokers": ["k:9092"], "topics": ["t"], "group_id": "g", "tag": "x", **keys}
    )


def test_the_default_names_host_and_source_and_is_stable_across_restarts(tmp_path: Path) -> None:
    first = default_instance_id("bus", tmp_path / "state", "indexer-1")
    assert first.startswith("logferry-indexer-1-bus-") and LEGAL.match(first)
    assert default_instance_id("bus", tmp_path / "state", "indexer-1") == first, "the same after a restart"


def test_two_daemons_of_one_host_differ_by_their_state_directory(tmp_path: Path) -> None:
    a = default_instance_id("bus", tmp_path / "a", "indexer-1")
    b = default_instance_id("bus", tmp_path / "b", "indexer-1")
    assert a != b, "one host, one source name, one group: two daemons must not fence each other"


def test_two_sources_of_one_daemon_and_two_hosts_differ(tmp_path: Path) -> None:
    ids = {default_instance_id(name, tmp_path, host) for name in ("bus", "audit") for host in ("idx-1", "idx-2")}
    assert len(ids) == 4


def test_the_state_directory_is_hashed_resolved(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")
    assert default_instance_id("bus", tmp_path / "link", "h") == default_instance_id("bus", tmp_path / "state", "h")
    relative = Path(os.path.relpath(tmp_path / "state"))
    assert default_instance_id("bus", relative, "h") == default_instance_id("bus", tmp_path / "state", "h")


def test_characters_kafka_refuses_become_dashes_and_the_length_stays_within_249(tmp_path: Path) -> None:
    odd = default_instance_id("bus ü/1", tmp_path, "host with spaces:and*stars")
    assert LEGAL.match(odd), odd
    assert odd.startswith("logferry-host-with-spaces-and-stars-bus-1-")
    long = default_instance_id("bus", tmp_path, "h" * 400)
    assert LEGAL.match(long) and len(long) == 249
    assert long[-9:] == default_instance_id("bus", tmp_path, "h")[-9:], "the directory's hash is kept whole"


def test_unset_gives_the_default_empty_gives_dynamic_membership_and_a_value_is_used_as_it_is(tmp_path: Path) -> None:
    assert instance_id("bus", config(), tmp_path) == default_instance_id("bus", tmp_path, os.uname().nodename)
    assert instance_id("bus", config(instance_id=""), tmp_path) is None
    assert instance_id("bus", config(instance_id="indexer-1.bus"), tmp_path) == "indexer-1.bus"


@pytest.mark.parametrize("value", ["indexer 1", "idx/1", "idx:1", "ü", ".", "..", "x" * 250])
def test_an_instance_id_kafka_would_refuse_is_refused_by_the_config(value: str) -> None:
    with pytest.raises(ValidationError, match="instance_id"):
        config(instance_id=value)


def test_the_longest_legal_instance_id_is_accepted() -> None:
    assert config(instance_id="a" * 249).instance_id == "a" * 249
