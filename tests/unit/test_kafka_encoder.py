"""Kafka messages from chunk frames: the record as it is, the Elasticsearch document id in a header, the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.outputs.elasticsearch.encoder import BulkEncoder
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.outputs.kafka.encoder import EncodeError, MessageEncoder
from tests.unit.test_es_encoder import config as es_config
from tests.unit.test_es_encoder import make_chunk


def config(**overrides: Any) -> KafkaOutputConfig:
    values: dict[str, Any] = {"type": "kafka", "brokers": ["127.0.0.1:9092"], "topic": "agents", **overrides}
    return KafkaOutputConfig(**values)


LINES = [
    b'{"request_id":"r1","timestamp":1795000000.5,"session":"s-1"}',
    b'{"timestamp":2,"session":7}',  # no id field: hashed from file and offset
    b'{"request_id":"","session":null}',  # unusable id, no key
    b"not json",
]


def test_each_record_goes_as_it_is_with_the_same_id_as_its_elasticsearch_document(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, (LINES, [0, 70, 100, 140]))
    messages = list(MessageEncoder(config()).messages(chunk))
    documents = list(BulkEncoder(es_config()).documents(chunk))
    assert [m.value for m in messages] == LINES
    assert [m.record_id for m in messages] == [d.doc_id for d in documents]
    assert messages[0].record_id == "r1" and len(messages[1].record_id) == 32
    assert [m.offset for m in messages] == [0, 70, 100, 140] and messages[0].path == "/var/log/agent.log"


def test_key_field_keys_each_message_when_it_has_a_usable_value(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, (LINES, [0, 70, 100, 140]))
    assert [m.key for m in MessageEncoder(config(key_field="session")).messages(chunk)] == [b"s-1", b"7", None, None]
    assert {m.key for m in MessageEncoder(config()).messages(chunk)} == {None}


def test_a_frame_whose_offsets_do_not_match_its_records_is_refused(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, (LINES, [0]))
    with pytest.raises(EncodeError):
        list(MessageEncoder(config()).messages(chunk))


def test_size_estimate_counts_value_key_and_id_header(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, (LINES[:1], [0]))
    (message,) = MessageEncoder(config(key_field="session")).messages(chunk)
    assert message.size("logferry.id") > len(LINES[0]) + len(b"s-1") + len("logferry.id") + len("r1")
