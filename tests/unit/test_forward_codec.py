"""The forward source's pure parts: message decoding, gzip limits, the handshake, the chunk journal."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.sources.forward.chunks import ChunkJournal, ChunkWindow
from pipeline.sources.forward.codec import (
    ProtocolError,
    TooLarge,
    _msgpack_entries,
    _ormsgpack_entries,
    decode,
    ext_hook,
    gunzip,
    unpack_entries,
)
from pipeline.sources.forward.config import ForwardSourceConfig
from pipeline.sources.forward.handshake import Handshake, client_ping


def roundtrip(message: object) -> object:
    return msgpack.unpackb(msgpack.packb(message), raw=False, ext_hook=ext_hook, strict_map_key=False)


def test_each_mode_decodes_to_tag_entries_and_chunk() -> None:
    et = msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, 123_000_000))
    message = decode(roundtrip(["a", et, {"k": 1}, {"chunk": "c"}]), 1 << 20)
    assert (message.tag, message.chunk) == ("a", "c")
    assert message.entries == [(pytest.approx(1_700_000_000.123), {"k": 1})]
    forward = decode(roundtrip(["b", [[1, {"k": 1}], [2, {"k": 2}]]]), 1 << 20)
    assert forward.chunk is None and [t for t, _ in forward.entries] == [1, 2]
    raw = msgpack.packb([1, {"k": 1}]) + msgpack.packb([2, "not a map"])
    packed = decode(roundtrip(["c", raw, {"size": 2}]), 1 << 20)
    assert [tuple(e) for e in packed.entries] == [(1, {"k": 1}), (2, "not a map")]
    zipped = decode(roundtrip(["d", gzip.compress(raw), {"compressed": "gzip"}]), 1 << 20)
    assert [tuple(e) for e in zipped.entries] == [(1, {"k": 1}), (2, "not a map")]


@pytest.mark.parametrize("bad", [
    {"not": "an array"}, ["tag-only"], [1, 2, {}], ["t", [[1]]], ["t", 1, {"k": 1}, "option"],
    ["t", b"\x92\x01"],  # PackedForward cut short
    ["t", 1, {"k": 1}, {"chunk": 5}],
    ["t", b"\x92\x01\x81\x91\x01\x01"],  # PackedForward with a record keyed by an array (unhashable)
])
def test_malformed_messages_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError):
        decode(roundtrip(bad), 1 << 20)


def test_gzip_output_is_bounded_and_multi_member_streams_are_joined() -> None:
    assert gunzip(gzip.compress(b"ab") + gzip.compress(b"cd"), 100) == b"abcd"
    with pytest.raises(TooLarge):
        gunzip(gzip.compress(b"0" * 10_000), 1000)
    with pytest.raises(ProtocolError):
        gunzip(gzip.compress(b"abc")[:-4], 1000)


def test_decoded_records_are_enriched_and_serialised_once_with_their_index_as_offset() -> None:
    from pipeline.clock import FakeClock
    from pipeline.config import EnrichConfig
    from pipeline.sources.base import LineBatch
    from pipeline.transforms.records import RecordProcessor

    processor = RecordProcessor(EnrichConfig(hostname="h", tag_key="tag"), {3600}, FakeClock(1_795_000_000.0))
    batch = LineBatch("fwd", "app.x", "chunk-1", "forward://peer", 0, 3, b"", None,
                      records=[{"a": 1, "timestamp": 1_700_000_000.5}, {1: b"bytes"}, {"bad": {1, 2}}])
    done = processor.process(batch)
    groups = sorted(done.groups[3600].items())  # two windows: the first record's own time, then ingest time
    assert [g.offsets for _, g in groups] == [[0], [1]] and batch.records is None
    first, second = (orjson.loads(line) for _, g in groups for line in g.lines)
    assert first == {"a": 1, "timestamp": 1_700_000_000.5, "hostname": "h", "ingested_at": first["ingested_at"],
                     "tag": "app.x"}
    assert second["1"] == "bytes"
    (dead,) = done.dead
    assert dead["offset"] == 2 and dead["reason"].startswith("record cannot be stored as JSON")


def test_handshake_accepts_the_right_key_only() -> None:
    server = Handshake.start("key", "srv")
    helo = msgpack.unpackb(server.helo())
    ok, _, pong = server.check_ping(msgpack.unpackb(client_ping(helo, "cli", "key")))
    assert ok and msgpack.unpackb(pong)[:4] == ["PONG", True, "", "srv"]
    ok, reason, pong = server.check_ping(msgpack.unpackb(client_ping(helo, "cli", "nope")))
    assert not ok and "wrong shared_key" in reason and msgpack.unpackb(pong)[1] is False
    assert not server.check_ping(["HELLO"])[0]


def test_journal_keeps_completed_commits_and_cuts_lines_of_an_unfinished_one(tmp_path: Path) -> None:
    now = [1000.0]
    journal = ChunkJournal(tmp_path, 600.0, lambda: now[0])
    journal.load(0)
    journal.write(1, ["a", "b"])
    journal.write(2, ["c"])  # its positions never reached the disk: commit_seq stayed 1
    again = ChunkWindow(ChunkJournal(tmp_path, 600.0, lambda: now[0]), 1, 600.0, 100)
    assert list(again.committed) == ["a", "b"]
    # commit 2 is made again with other chunks: the void "c" must not come back
    again.journal.write(2, ["d"])
    assert list(ChunkWindow(ChunkJournal(tmp_path, 600.0, lambda: now[0]), 2, 600.0, 100).committed) == [
        "a", "b", "d"]


def test_journal_rolls_over_and_deletes_segments_past_the_window(tmp_path: Path) -> None:
    now = [1000.0]
    journal = ChunkJournal(tmp_path, 600.0, lambda: now[0])
    journal.load(0)
    journal.write(1, ["old"])
    now[0] = 1700.0
    journal.write(2, ["mid"])
    now[0] = 2400.0
    journal.write(3, ["new"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks-1700.jsonl", "chunks-2400.jsonl"]
    window = ChunkWindow(ChunkJournal(tmp_path, 600.0, lambda: now[0]), 3, 600.0, 100)
    assert window.expire(now[0]) == 1 and list(window.committed) == ["new"]


def test_window_bounds_its_size_and_acks_a_resend_that_waited_for_the_first_copy(tmp_path: Path) -> None:
    journal = ChunkJournal(tmp_path, 600.0)
    window = ChunkWindow(journal, 0, 600.0, 2)
    acked: list[str] = []
    window.begin("x")
    assert window.wait_for("x", lambda: acked.append("resend"))
    for ack in window.done("x", 10.0):
        ack()
    window.done("y", 11.0)
    window.done("z", 12.0)
    assert acked == ["resend"] and window.expire(12.0) == 1 and not window.is_committed("x")


def forward_config(**options: object) -> ForwardSourceConfig:
    return ForwardSourceConfig.model_validate({"type": "forward", **options})


def test_shared_key_file_is_read_without_its_newline_and_refused_when_open_to_others(tmp_path: Path) -> None:
    key = tmp_path / "fleet-key"
    key.write_text("s3cret\n")
    key.chmod(0o640)
    config = forward_config(shared_key_file=str(key), bind="0.0.0.0")
    assert config.key() == "s3cret" and config.requires_handshake() and config.exposure_warning() is None
    key.chmod(0o644)
    with pytest.raises(ValidationError, match=r"shared_key_file[\s\S]*open to others \(mode 0644\)"):
        forward_config(shared_key_file=str(key))
    key.chmod(0o600)
    key.write_text("\n")
    with pytest.raises(ValidationError, match=r"shared_key_file[\s\S]*is empty"):
        forward_config(shared_key_file=str(key))
    with pytest.raises(ValidationError, match=r"shared_key_file[\s\S]*cannot read .*No such file"):
        forward_config(shared_key_file=str(tmp_path / "missing"))
    key.write_text("s3cret")
    with pytest.raises(ValidationError, match="not both"):
        forward_config(shared_key="a", shared_key_file=str(key))


# -- PackedForward entries: ormsgpack where it decodes as msgpack does, msgpack otherwise ----------

_EVENT_TIMES = st.builds(lambda s, ns: msgpack.ExtType(0, struct.pack(">II", s, ns)),
                         st.integers(0, 2**32 - 1), st.integers(0, 999_999_999))
_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(width=32) | st.text()
            | st.binary(max_size=40))
_KEYS = st.text(max_size=12) | st.sampled_from([1, -7, None, True, 2.5, b"k"])  # mostly str, as records are
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12)
_RECORDS = st.dictionaries(_KEYS, _VALUES, max_size=8) | _SCALARS  # a scalar: a record that is not a map


def _packed(entries: list[tuple[object, object]], single_float: bool) -> bytes:
    """The entries packed, floats as float 32 (``single_float``) or float 64: clients send either."""
    return b"".join(msgpack.packb([when, record], use_single_float=single_float) for when, record in entries)


def _stored(entries: list[tuple[object, object]]) -> tuple[list[bytes], list[dict[str, object]]]:
    """What the processor stores from decoded entries: the lines and the dead letters' reasons and lines."""
    from pipeline.clock import FakeClock
    from pipeline.config import EnrichConfig
    from pipeline.sources.base import LineBatch
    from pipeline.transforms.records import RecordProcessor

    records = [record for _, record in entries if isinstance(record, dict)]
    processor = RecordProcessor(EnrichConfig(hostname="h", tag_key="tag"), {3600}, FakeClock(1_795_000_000.0))
    done = processor.process(LineBatch("fwd", "app", "c", "forward://p", 0, len(records), b"", None, records=records))
    lines = [line for _, group in sorted(done.groups[3600].items()) for line in group.lines]
    return lines, [{k: v for k, v in entry.items() if k != "time"} for entry in done.dead]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1) | _EVENT_TIMES, _RECORDS), max_size=6), st.booleans())
def test_packed_entries_decode_to_what_msgpack_alone_gives_and_store_the_same_bytes(
        entries: list[tuple[object, object]], single_float: bool) -> None:
    raw = _packed(entries, single_float)
    fast, reference = unpack_entries(raw), _msgpack_entries(raw)
    assert repr(fast) == repr(reference)  # repr: True is not 1, 1.0 is not 1, a list is not a tuple, key order
    assert _stored(fast) == _stored(reference)


def test_typical_records_take_ormsgpack_and_the_rest_falls_back_to_msgpack() -> None:
    now = msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, 5))
    typical = _packed([(now, {"model": "m", "input": "naïve café 数据管道 🚀", "usage": {"in": 12, "out": 40},
                              "tags": ["a", None, True, 1.5], "blob": b"\xff\x00"}),
                       (1_700_000_000, {"latency_ms": 123.4, "nested": {"deeper": {"k": -1}}}), (1, "not a map")],
                      False)
    assert _ormsgpack_entries(typical) is not None and unpack_entries(typical) == _msgpack_entries(typical)
    odd = {
        "non-str key": msgpack.packb([1, {"a": {7: "x"}}]),
        "bin key": msgpack.packb([1, {b"k": 1}]),
        "text not UTF-8": b"\x92\x01\x81\xa1a\xa2\xff\xfe",
        "key not UTF-8": b"\x92\x01\x81\xa2\xff\xfe\x01",
        "msgpack timestamp (ext -1)": msgpack.packb([msgpack.Timestamp(1_700_000_000, 5), {"a": 1}], datetime=False),
    }
    for name, raw in odd.items():
        assert _ormsgpack_entries(raw) is None, name
        assert repr(unpack_entries(raw)) == repr(_msgpack_entries(raw)), name
    assert [tuple(e) for e in unpack_entries(odd["text not UTF-8"])] == [(1, {"a": "\udcff\udcfe"})]  # as before


@pytest.mark.parametrize("raw", [
    msgpack.packb([1, {"a": 1}]) + msgpack.packb([2, {"b": 2}])[:-1],  # the last entry cut short
    msgpack.packb([1, {"a": 1}]) + b"\xc1",  # a byte that is no msgpack
    msgpack.packb([1, {"a": 1}]) + b"\xc0",  # a whole object that is no entry (nil), last
    b"\xc0" + msgpack.packb([1, {"a": 1}]),  # ... and first
    msgpack.packb([1, {"a": 1}, 3]),  # an entry of three
    msgpack.packb([msgpack.ExtType(5, b"xy"), {"a": 1}]),  # an extension that is not EventTime
    msgpack.packb([msgpack.ExtType(0, b"short"), {"a": 1}]),  # an EventTime of the wrong length
    b"\x92\x01\x81\x91\x01\x01",  # a record keyed by an array
    b"\x92\x01" + b"\x91" * 5000 + b"\x01",  # nested deeper than msgpack's stack
])
def test_bad_packed_entries_are_refused_as_msgpack_alone_refuses_them(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as fast:
        unpack_entries(raw)
    with pytest.raises(ProtocolError) as reference:
        _msgpack_entries(raw)
    assert str(fast.value) == str(reference.value)


@pytest.mark.parametrize("option", [{}, {"size": 2}, {"size": 1}, {"size": 3}, {"size": 0}, {"size": "two"}])
def test_the_size_option_is_not_trusted(option: dict[str, object]) -> None:
    raw = msgpack.packb([1, {"a": 1}]) + msgpack.packb([2, {"b": b"\x00"}])
    message = decode(roundtrip(["t", raw, option]), 1 << 20)
    assert [tuple(e) for e in message.entries] == [(1, {"a": 1}), (2, {"b": b"\x00"})]
