"""Bulk bodies from chunk frames: documents byte for byte, deterministic ids, index from event time, bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame
from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig
from pipeline.outputs.elasticsearch.encoder import BulkEncoder, EncodeError, bulk_body
from pipeline.outputs.elasticsearch.template import index_template
from pipeline.outputs.records import hashed_id

TIMEKEY = 1_794_996_000  # 2026-11-18T10:00:00Z
T = 1_795_000_000  # 2026-11-18T11:06:40Z


def config(**overrides: Any) -> ElasticsearchOutputConfig:
    values: dict[str, Any] = {"type": "elasticsearch", "hosts": ["http://127.0.0.1:9200"],
                              "index": "ai-interactions-%Y.%m.%d", **overrides}
    return ElasticsearchOutputConfig(**values)


def make_chunk(tmp_path: Path, *frames: tuple[list[bytes], list[int]], file: str = "2049:77") -> Chunk:
    tmp_path.mkdir(parents=True, exist_ok=True)
    chunk = Chunk(tmp_path, TIMEKEY, "c0ffee0123456789", ChunkState.QUEUED)
    chunk.write(header_frame(chunk, 1, "search"))
    for seq, (lines, offsets) in enumerate(frames, start=1):
        meta = {"src": "agent", "file": file, "path": "/var/log/agent.log", "end": 999, "offs": offsets}
        chunk.write(frame.encode(frame.KIND_DATA, seq, len(lines), meta, b"".join(line + b"\n" for line in lines)))
    chunk.close()
    return chunk


def ndjson(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n")
    return body.split(b"\n")[:-1]


def test_body_is_action_then_the_document_unchanged(tmp_path: Path) -> None:
    line = b'{"request_id":"r1", "timestamp":1795000000.5,"input":"caf\xc3\xa9 \\u00e9","x":1.50}'
    chunk = make_chunk(tmp_path, ([line], [0]))
    (batch,) = BulkEncoder(config()).batches(chunk)
    assert ndjson(bulk_body(batch)) == [
        b'{"create":{"_index":"ai-interactions-2026.11.18","_id":"r1"}}',
        line,  # not re-serialised: spacing, escapes and number formatting kept
    ]
    assert batch[0].line == line and batch[0].offset == 0 and batch[0].path == "/var/log/agent.log"


def test_op_type_index(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, ([b'{"request_id":"r1","timestamp":1795000000}'], [0]))
    (batch,) = BulkEncoder(config(op_type="index")).batches(chunk)
    assert ndjson(bulk_body(batch))[0] == b'{"index":{"_index":"ai-interactions-2026.11.18","_id":"r1"}}'


def test_ids_from_the_id_key_else_a_hash_of_where_the_record_was_read(tmp_path: Path) -> None:
    lines = [b'{"request_id":"r1","timestamp":1}', b'{"timestamp":2}', b'{"request_id":7}',
             b'{"request_id":"","timestamp":3}', b'{"request_id":true}', b'{"id":"x' + b"y" * 600 + b'"}']
    offsets = [0, 40, 80, 120, 160, 200]
    docs = list(BulkEncoder(config()).documents(make_chunk(tmp_path, (lines, offsets))))
    assert [d.doc_id for d in docs[:3]] == ["r1", hashed_id("2049:77", 40, 2), "7"]
    assert docs[3].doc_id == hashed_id("2049:77", 120, 3)
    assert docs[4].doc_id == hashed_id("2049:77", 160, None)
    assert len({d.doc_id for d in docs}) == len(docs)
    custom = list(BulkEncoder(config(id_key="id")).documents(make_chunk(tmp_path / "b", (lines, offsets))))
    assert custom[5].doc_id == hashed_id("2049:77", 200, None), "longer than Elasticsearch allows: hashed"


def test_hashed_ids_are_deterministic_and_depend_on_file_offset_and_time(tmp_path: Path) -> None:
    first = hashed_id("2049:77", 40, 1795000000.25)
    assert first == hashed_id("2049:77", 40, 1795000000.25)
    assert len(first) == 32 and int(first, 16) >= 0
    assert len({first, hashed_id("2049:78", 40, 1795000000.25), hashed_id("2049:77", 41, 1795000000.25),
                hashed_id("2049:77", 40, 1795000001.25)}) == 4


def test_the_same_chunk_encodes_to_the_same_body(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, ([b'{"timestamp":1795000000}', b'{"n":1}'], [0, 30]))
    encoder = BulkEncoder(config())
    assert bulk_body(next(encoder.batches(chunk))) == bulk_body(next(BulkEncoder(config()).batches(chunk)))


def test_index_name_from_each_records_event_time_in_utc(tmp_path: Path) -> None:
    lines = [
        b'{"timestamp":1795000000}',  # 2026-11-18T11:06:40Z
        b'{"timestamp":"2026-11-19T00:30:00+02:00"}',  # 2026-11-18T22:30Z
        b'{"timestamp":"2026-11-19T00:30:00Z"}',
        b'{"timestamp":"yesterday"}',  # unusable: the chunk's time key
        b'{"no_time":1}',
    ]
    docs = list(BulkEncoder(config(index="ai-%Y.%m.%d.%H")).documents(make_chunk(tmp_path, (lines, [0] * 5))))
    assert [d.index for d in docs] == ["ai-2026.11.18.11", "ai-2026.11.18.22", "ai-2026.11.19.00",
                                       "ai-2026.11.18.10", "ai-2026.11.18.10"]


def test_time_key_is_configurable(tmp_path: Path) -> None:
    lines = [b'{"ts":1795000000,"timestamp":1}']
    (doc,) = BulkEncoder(config(time_key="ts")).documents(make_chunk(tmp_path, (lines, [0])))
    assert doc.index == "ai-interactions-2026.11.18"


def test_positions_run_across_frames_and_skip_leaves_records_out(tmp_path: Path) -> None:
    first = ([b'{"request_id":"a%d","timestamp":%d}' % (n, T) for n in range(3)], [0, 50, 100])
    second = ([b'{"request_id":"b%d","timestamp":%d}' % (n, T) for n in range(2)], [150, 200])
    chunk = make_chunk(tmp_path, first, second)
    encoder = BulkEncoder(config())
    assert [(d.position, d.doc_id) for d in encoder.documents(chunk)] == [
        (0, "a0"), (1, "a1"), (2, "a2"), (3, "b0"), (4, "b1"),
    ]
    assert [d.doc_id for d in encoder.documents(chunk, skip={0, 2, 3})] == ["a1", "b1"]


def test_batches_are_bounded_by_documents(tmp_path: Path) -> None:
    lines = [b'{"request_id":"r%d","timestamp":%d}' % (n, T) for n in range(7)]
    chunk = make_chunk(tmp_path, (lines, list(range(7))))
    sizes = [len(b) for b in BulkEncoder(config(bulk_max_docs=3)).batches(chunk)]
    assert sizes == [3, 3, 1]


def test_batches_are_bounded_by_bytes_and_a_large_document_goes_alone(tmp_path: Path) -> None:
    small = [b'{"request_id":"s%d","timestamp":%d,"pad":"%s"}' % (n, T, b"x" * 300) for n in range(6)]
    big = b'{"request_id":"big","timestamp":%d,"pad":"%s"}' % (T, b"y" * 3000)
    lines = [*small[:3], big, *small[3:]]
    chunk = make_chunk(tmp_path, (lines, list(range(7))))
    batches = list(BulkEncoder(config(bulk_max_bytes=1024)).batches(chunk))
    assert [[d.doc_id for d in b] for b in batches] == [["s0", "s1"], ["s2"], ["big"], ["s3", "s4"], ["s5"]]
    for batch in batches:
        assert len(batch) == 1 or len(bulk_body(batch)) <= 1024
    assert b"".join(bulk_body(b) for b in batches).count(b"\n") == 14


def test_every_line_of_a_generated_chunk_round_trips(tmp_path: Path) -> None:
    from pipeline import generator

    lines = [line.rstrip(b"\n") for line in generator.lines(200, max_chars=2000)]
    offsets = [sum(len(x) + 1 for x in lines[:n]) for n in range(len(lines))]
    chunk = make_chunk(tmp_path, (lines[:120], offsets[:120]), (lines[120:], offsets[120:]))
    body = b"".join(bulk_body(b) for b in BulkEncoder(config(bulk_max_bytes=64 * 1024)).batches(chunk))
    parts = ndjson(body)
    assert parts[1::2] == lines
    actions = [orjson.loads(a)["create"] for a in parts[0::2]]
    assert [a["_id"] for a in actions] == [generator.request_id(1, n) for n in range(200)]
    assert {a["_index"] for a in actions} == {"ai-interactions-2026.11.18"}


def test_a_frame_whose_offsets_do_not_match_its_records_is_an_error(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, ([b'{"a":1}', b'{"a":2}'], [0]))
    with pytest.raises(EncodeError, match="2 records has 2 lines and 1 offsets"):
        list(BulkEncoder(config()).documents(chunk))


def test_a_line_that_is_not_an_object_is_still_sent_for_elasticsearch_to_judge(tmp_path: Path) -> None:
    chunk = make_chunk(tmp_path, ([b"[1,2]"], [10]))
    (doc,) = BulkEncoder(config()).documents(chunk)
    assert doc.doc_id == hashed_id("2049:77", 10, None) and doc.line == b"[1,2]"
    assert doc.index == "ai-interactions-2026.11.18"


@pytest.mark.parametrize(("index", "pattern", "name"), [
    ("ai-interactions-%Y.%m.%d", "ai-interactions-*", "ai-interactions"),
    ("logs-%Y-%m-app", "logs-*-app", "logs-app"),
    ("fixed-index", "fixed-index", "fixed-index"),
])
def test_template_defaults_follow_the_index(index: str, pattern: str, name: str) -> None:
    template = index_template(config(index=index))
    assert template["index_patterns"] == [pattern]
    assert template["name"] == name
    mappings = template["template"]["mappings"]
    assert mappings["dynamic"] is True
    assert mappings["properties"]["timestamp"] == {"type": "date", "format": "epoch_second||strict_date_optional_time"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"index": "AI-%Y"}, "must be lowercase"),
    ({"index": "logs-%b"}, "must be lowercase"),
    ({"index": "a/b"}, "must not contain"),
    ({"index": "_x"}, "must not start with"),
    ({"password": "p"}, "a password needs a username"),
    ({"username": "u"}, "no password"),
    ({"username": "u", "password": "p", "password_file": "/p"}, "not both"),
    ({"username": "u", "password": "p", "api_key": "k"}, "either username and password or an API key"),
    ({"ca_file": "/ca.pem"}, "ca_file needs https"),
    ({"bulk_max_docs": 0}, "greater than or equal to 1"),
])
def test_config_mistakes_are_caught_at_load_time(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**overrides)


def test_a_data_stream_gets_create_actions_and_an_at_timestamp_from_the_event_time(tmp_path: Path) -> None:
    lines = [
        b'{"request_id":"r1","timestamp":1795000000.5}',
        b'{"request_id":"r2","@timestamp":"2026-01-01T00:00:00Z"}',
        b"{}",
    ]
    chunk = make_chunk(tmp_path, (lines, [0, 50, 120]))
    (batch,) = BulkEncoder(config(index="logs-ai.interactions-default", data_stream=True)).batches(chunk)

    body = ndjson(bulk_body(batch))
    assert body[0] == b'{"create":{"_index":"logs-ai.interactions-default","_id":"r1"}}'
    assert body[1] == b'{"request_id":"r1","timestamp":1795000000.5,"@timestamp":"2026-11-18T11:06:40.500Z"}'
    assert body[3] == lines[1], "a record's own @timestamp is kept"
    assert orjson.loads(body[5]) == {"@timestamp": "2026-11-18T10:00:00.000Z"}, "no event time: the chunk's time key"


def test_a_data_stream_template_declares_it_and_maps_at_timestamp() -> None:
    template = index_template(config(index="logs-ai.interactions-default", data_stream=True))
    assert template["data_stream"] == {} and template["index_patterns"] == ["logs-ai.interactions-default"]
    assert template["template"]["mappings"]["properties"]["@timestamp"] == {"type": "date"}
    assert "data_stream" not in index_template(config())


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data_stream": True, "op_type": "index"}, "data streams only take op_type = \"create\""),
    ({"data_stream": True}, "a data stream's name has no strftime placeholders"),
])
def test_data_stream_mistakes_are_caught_at_load_time(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**overrides)
