"""Kafka messages from chunk frames: the record as it is, the Elasticsearch document id in a header, the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame
from pipeline.outputs.elasticsearch.encoder import BulkEncoder
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.outputs.kafka.encoder import EncodeError, MessageEncoder
from tests.unit.test_es_encoder import TIMEKEY, make_chunk
from tests.unit.test_es_encoder import config as es_config


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


def chunk_with_ids(tmp_path: Path, lines: list[bytes], ids: list[str], id_keys: list[str]) -> Chunk:
    """A chunk of one frame whose meta carries ``ids`` computed with ``id_keys``, as the committer writes them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    chunk = Chunk(tmp_path, TIMEKEY, "c0ffee0123456789", ChunkState.QUEUED)
    chunk.write(header_frame(chunk, 1, "fleet"))
    meta = {"src": "agent", "file": "2049:77", "path": "/var/log/agent.log", "end": 999,
            "offs": list(range(len(lines))), "ids": ids, "idk": id_keys}
    chunk.write(frame.encode(frame.KIND_DATA, 1, len(lines), meta, b"".join(line + b"\n" for line in lines)))
    chunk.close()
    return chunk


def test_ids_carried_in_the_frame_are_used_without_parsing_when_computed_with_the_same_keys(tmp_path: Path) -> None:
    lines = [b"not parsed: the carried id is used", b'{"request_id":"r2"}']
    carried = chunk_with_ids(tmp_path / "a", lines, ["c1", "c2"], ["request_id", "timestamp"])
    messages = list(MessageEncoder(config()).messages(carried))
    assert [(m.value, m.record_id, m.key) for m in messages] == [(lines[0], "c1", None), (lines[1], "c2", None)]
    # Other keys (the config changed since the frame was written), or a key field to read: parsed again.
    other = chunk_with_ids(tmp_path / "b", lines, ["c1", "c2"], ["session", "timestamp"])
    assert [m.record_id for m in MessageEncoder(config()).messages(other)][1] == "r2"
    assert [m.record_id for m in MessageEncoder(config(key_field="session")).messages(carried)][1] == "r2"
    short = chunk_with_ids(tmp_path / "c", lines, ["c1"], ["request_id", "timestamp"])
    with pytest.raises(EncodeError):
        list(MessageEncoder(config()).messages(short))
