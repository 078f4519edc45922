"""The forward source's pure parts: message decoding, gzip limits, the handshake, the chunk journal."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import msgpack
import orjson
import pytest
from pydantic import ValidationError

from pipeline.sources.forward.chunks import ChunkJournal, ChunkWindow
from pipeline.sources.forward.codec import ProtocolError, TooLarge, decode, ext_hook, gunzip
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
