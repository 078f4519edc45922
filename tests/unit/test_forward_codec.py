"""The forward source's pure parts: message decoding, gzip limits, the handshake, the chunk journal."""

from __future__ import annotations

import errno
import gzip
import os
import struct
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.sources.forward.chunks import ChunkJournal, ChunkWindow, committed_seq, cut_void
from pipeline.sources.forward.codec import ProtocolError, TooLarge, decode, ext_hook, gunzip, unpacker
from pipeline.sources.forward.config import ForwardSourceConfig
from pipeline.sources.forward.handshake import Handshake, client_ping
from pipeline.transforms.packed import (
    _msgpack_entries,
    _ormsgpack_entries,
    serialise_packed,
    unpack_records,
    unpacked_slices,
    whole_objects,
)


def roundtrip(message: object) -> object:
    return msgpack.unpackb(msgpack.packb(message), raw=False, ext_hook=ext_hook, strict_map_key=False)


def test_each_mode_decodes_to_tag_entries_and_chunk() -> None:
    et = msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, 123_000_000))
    message = decode(roundtrip(["a", et, {"k": 1}, {"chunk": "c"}]), 1 << 20)
    assert (message.tag, message.chunk) == ("a", "c")
    assert message.entries == [(pytest.approx(1_700_000_000.123), {"k": 1})]
    forward = decode(roundtrip(["b", [[1, {"k": 1}], [2, {"k": 2}]]]), 1 << 20)
    assert forward.chunk is None and [t for t, _ in forward.entries] == [1, 2]
    first, second = msgpack.packb([1, {"k": 1}]), msgpack.packb([2, "not a map"])
    raw = first + second
    packed = decode(roundtrip(["c", raw, {"size": 2}]), 1 << 20)
    assert (packed.packed, packed.entries) == (raw, [])  # framed and decoded where processed
    zipped = decode(roundtrip(["d", gzip.compress(raw), {"compressed": "gzip"}]), 1 << 20)
    assert zipped.packed == raw
    assert unpack_records(raw, "time") == ([{"k": 1, "time": 1.0}], [(1, b'"not a map"', "record is not a map")])


@pytest.mark.parametrize("bad", [
    {"not": "an array"}, ["tag-only"], [1, 2, {}], ["t", 1, {"k": 1}, "option"],
    ["t", 1, {"k": 1}, {"chunk": 5}],
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


def test_a_commit_point_line_holds_all_its_chunks_and_every_journal_is_searched_for_it(tmp_path: Path) -> None:
    now = [1000.0]
    kept = ChunkJournal(tmp_path / "forward" / "fluent", 600.0, lambda: now[0])
    kept.load(0)
    kept.write(1, ["a", "b"], point=True)  # a commit of this source only: its line is the commit point
    kept.write(2, ["c"])  # a commit that saved the positions (commit_seq 2 there)
    removed = ChunkJournal(tmp_path / "forward" / "removed-from-the-config", 600.0, lambda: now[0])
    removed.load(0)
    removed.write(3, ["d"], point=True)
    with (tmp_path / "forward" / "removed-from-the-config" / "chunks-1000.jsonl").open("ab") as torn:
        torn.write(b'[4, 1000.0, ["e", "f"')  # commit 4's point, cut short by a crash: void

    assert committed_seq(tmp_path) == 3
    assert committed_seq(tmp_path / "elsewhere") == 0
    again = ChunkWindow(ChunkJournal(tmp_path / "forward" / "fluent", 600.0, lambda: now[0]), 3, 600.0, 100)
    assert list(again.committed) == ["a", "b", "c"]
    void = ChunkWindow(ChunkJournal(tmp_path / "forward" / "removed-from-the-config", 600.0, lambda: now[0]), 3,
                       600.0, 100)
    assert list(void.committed) == ["d"]
    assert (tmp_path / "forward" / "removed-from-the-config" / "chunks-1000.jsonl").read_bytes().count(b"\n") == 1


def test_the_void_lines_of_a_source_no_longer_configured_are_cut_at_start_too(tmp_path: Path) -> None:
    now = [1000.0]
    gone = tmp_path / "forward" / "removed-after-the-crash"
    journal = ChunkJournal(gone, 600.0, lambda: now[0])
    journal.load(0)
    journal.write(4, ["kept"])
    journal.write(5, ["void"])  # commit 5's positions never reached the disk: its frames are rolled back

    cut_void(tmp_path, 4)  # at start, whatever the config holds

    # Commit numbers are used again after the crash: were its line still there, a source of that name
    # added again later would take "void" for committed, and ack its resend without storing it.
    again = ChunkWindow(ChunkJournal(gone, 600.0, lambda: now[0]), 9, 600.0, 100)
    assert list(again.committed) == ["kept"]


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


def test_a_wall_clock_step_neither_forgets_the_window_nor_keeps_it_for_ever(tmp_path: Path) -> None:
    # The journal keeps wall-clock times; the window ages on the monotonic clock the source passes.
    wall, mono = [1000.0], [50.0]
    journal = ChunkJournal(tmp_path, 600.0, lambda: wall[0])
    journal.load(0)
    journal.write(1, ["loaded"])
    window = ChunkWindow(ChunkJournal(tmp_path, 600.0, lambda: wall[0]), 1, 600.0, 100, mono[0] - wall[0])
    window.done("new", mono[0])
    wall[0] += 3600.0  # NTP, or a VM resumed: an hour forward, while one second passes
    mono[0] += 1.0
    assert window.expire(mono[0]) == 0 and list(window.committed) == ["loaded", "new"]
    mono[0] += 600.0  # the window's length, truly elapsed
    assert window.expire(mono[0]) == 2


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


def _processor() -> Any:
    from pipeline.clock import FakeClock
    from pipeline.config import EnrichConfig
    from pipeline.transforms.records import RecordProcessor

    return RecordProcessor(EnrichConfig(hostname="h", tag_key="tag"), {3600}, FakeClock(1_795_000_000.0))


def _stored(raw: bytes | None = None, records: list[dict[object, object]] | None = None
            ) -> tuple[list[bytes], list[dict[str, object]]]:
    """What the processor stores from a packed batch (``raw``) or from maps a source decoded (``records``):
    the lines and the dead letters (but their time)."""
    from pipeline.sources.base import LineBatch

    batch = LineBatch("fwd", "app", "c", "forward://p", 0, 0, raw or b"", None, packed=raw is not None,
                      dead_fields={"peer": "p"}, records=records)
    done = _processor().process(batch)
    lines = [line for _, group in sorted(done.groups[3600].items()) for line in group.lines]
    return lines, [{k: v for k, v in entry.items() if k != "time"} for entry in done.dead]


def _by_rules(raw: bytes, time_key: str) -> tuple[list[dict[object, object]], list[tuple[int, str]]]:
    """Entries decoded by msgpack's own Unpacker, and the forward source's rules applied by hand."""
    stream = msgpack.Unpacker(raw=False, ext_hook=ext_hook, strict_map_key=False, unicode_errors="surrogateescape")
    stream.feed(raw)
    maps, bad = [], []
    for index, (when, record) in enumerate(stream):
        if not isinstance(record, dict):
            bad.append((index, "record is not a map"))
            continue
        if time_key not in record and isinstance(when, int | float) and not isinstance(when, bool):
            record[time_key] = float(when)
        maps.append(record)
    return maps, bad


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1) | _EVENT_TIMES, _RECORDS), max_size=6), st.booleans())
def test_packed_entries_decode_to_what_msgpack_alone_gives_and_store_the_same_bytes(
        entries: list[tuple[object, object]], single_float: bool) -> None:
    raw = _packed(entries, single_float)
    ends, whole = whole_objects(raw)
    assert whole and len(ends) == len(entries)
    fast = _ormsgpack_entries(raw, len(ends))
    if fast is not None:  # else unpack_records takes msgpack's
        assert repr(fast) == repr(_msgpack_entries(raw, ends, []))  # repr: True is not 1, 1.0 is not 1, key order
    records, bad = unpack_records(raw, "timestamp")
    maps, not_maps = _by_rules(raw, "timestamp")
    assert repr(records) == repr(maps) and [(i, reason) for i, _, reason in bad] == not_maps
    lines, dead = _stored(raw)
    expected_lines, expected_dead = _stored(records=maps)
    assert lines == expected_lines
    assert dead == [{**_letter(i, "record is not a map"), **d} for i, d in _shown(raw, not_maps)] + expected_dead


def _letter(offset: int, reason: str) -> dict[str, object]:
    return {"id": f"fwd:c:{offset}", "source": "fwd", "path": "forward://p", "offset": offset, "reason": reason,
            "peer": "p"}


def _shown(raw: bytes, bad: list[tuple[int, str]]) -> list[tuple[int, dict[str, object]]]:
    """A non-map record's line fields, as the dead-letter store shows it (its JSON)."""
    from pipeline.deadletter import line_fields

    stream = msgpack.Unpacker(raw=False, ext_hook=ext_hook, strict_map_key=False, unicode_errors="surrogateescape")
    stream.feed(raw)
    entries = list(stream)
    return [(i, line_fields(orjson.dumps(entries[i][1], default=repr, option=orjson.OPT_NON_STR_KEYS)))
            for i, _ in bad]


def test_typical_records_take_ormsgpack_and_the_rest_falls_back_to_msgpack() -> None:
    now = msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, 5))
    typical = _packed([(now, {"model": "m", "input": "naïve café 数据管道 🚀", "usage": {"in": 12, "out": 40},
                              "tags": ["a", None, True, 1.5], "blob": b"\xff\x00"}),
                       (1_700_000_000, {"latency_ms": 123.4, "nested": {"deeper": {"k": -1}}}), (1, "not a map")],
                      False)
    ends, whole = whole_objects(typical)
    assert whole and _ormsgpack_entries(typical, len(ends)) == _msgpack_entries(typical, ends, [])
    odd = {
        "non-str key": msgpack.packb([1, {"a": {7: "x"}}]),
        "bin key": msgpack.packb([1, {b"k": 1}]),
        "text not UTF-8": b"\x92\x01\x81\xa1a\xa2\xff\xfe",
        "key not UTF-8": b"\x92\x01\x81\xa2\xff\xfe\x01",
        "msgpack timestamp (ext -1)": msgpack.packb([msgpack.Timestamp(1_700_000_000, 5), {"a": 1}], datetime=False),
    }
    for name, raw in odd.items():
        assert _ormsgpack_entries(raw, 1) is None, name
        records, bad = unpack_records(raw, "t")
        assert not bad and repr(records) == repr(_by_rules(raw, "t")[0]), name
    assert unpack_records(odd["text not UTF-8"], "t")[0] == [{"a": "\udcff\udcfe", "t": 1.0}]  # as before


@pytest.mark.parametrize("raw", [
    msgpack.packb([1, {"a": 1}]) + msgpack.packb([2, {"b": 2}])[:-1],  # the last entry cut short
    msgpack.packb([1, {"a": 1}]) + b"\xc1",  # a byte that is no msgpack
    b"\x92\x01" + b"\x91" * 5000 + b"\x01",  # nested deeper than msgpack's stack
])
def test_a_packed_stream_that_is_not_whole_msgpack_objects_is_stored_up_to_the_fault_and_the_rest_dead_lettered(
        raw: bytes) -> None:
    """The source does not frame a chunk on the loop: the whole entries before the fault are stored, the
    bytes from there are one dead letter (the entry after the last whole one), and the chunk is acked."""
    from pipeline.sources.base import LineBatch

    message = decode(["t", raw, {"chunk": "k"}], 1 << 20)
    assert message.packed == raw and message.chunk == "k"
    head = msgpack.packb([1, {"a": 1}])
    whole = 1 if raw.startswith(head) else 0
    last = len(head) if whole else 0
    records, bad = unpack_records(raw, "t")
    assert records == [{"a": 1, "t": 1.0}][:whole]
    ((index, shown, reason),) = bad
    assert (index, shown) == (whole, raw[last:])
    assert reason == f"bad PackedForward entries: cut short or not msgpack after {last} of {len(raw)} bytes"
    batch = LineBatch("fwd", "app", "c", "forward://p", 0, 0, raw, None, packed=True, dead_fields={"peer": "p"})
    done = _processor().process(batch)
    assert batch.end == whole + 1 and done.records == whole  # the source counts the entries found
    (letter,) = done.dead
    assert (letter["offset"], letter["id"], letter["reason"]) == (whole, f"fwd:c:{whole}", reason)


def test_entries_beyond_what_an_array_counts_are_one_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_ENTRIES (4,294,967,295, a chunk over 4 GiB) the rest is dead-lettered, not decoded: here the
    bound is lowered to 2 to show it."""
    from pipeline.transforms import packed

    monkeypatch.setattr(packed, "MAX_ENTRIES", 2)
    entries = [msgpack.packb([n, {"n": n}]) for n in range(3)]
    raw = b"".join(entries)
    last = len(entries[0]) + len(entries[1])
    records, bad = unpack_records(raw, "t")
    assert records == [{"n": 0, "t": 0.0}, {"n": 1, "t": 1.0}]
    assert bad == [(2, entries[2], f"bad PackedForward entries: more than 2 entries after {last} of {len(raw)} bytes")]


@pytest.mark.parametrize(("entry", "reason"), [
    (msgpack.packb(None), "an entry must be [time, record], got a NoneType"),
    (msgpack.packb([1, {"a": 1}, 3]), "an entry must be [time, record], got a list of 3 items"),
    (msgpack.packb([msgpack.ExtType(5, b"xy"), {"a": 1}]), "entry cannot be decoded: unknown msgpack extension type 5"),
    (msgpack.packb([msgpack.ExtType(0, b"short"), {"a": 1}]), "entry cannot be decoded: unknown msgpack extension"),
    (b"\x92\x01\x81\x91\x01\x01", "entry cannot be decoded: "),  # a record keyed by an array: unhashable
    (msgpack.packb([1, [1, 2]]), "record is not a map"),
])
def test_a_bad_entry_is_dead_lettered_with_its_index_and_its_neighbours_are_stored(entry: bytes, reason: str) -> None:
    first = msgpack.packb([1, {"n": 0}])
    raw = first + entry + msgpack.packb([2, {"n": 2}])
    assert whole_objects(raw) == ([len(first), len(first) + len(entry), len(raw)], True)  # no framing fault
    records, bad = unpack_records(raw, "t")
    assert records == [{"n": 0, "t": 1.0}, {"n": 2, "t": 2.0}]
    ((index, _, why),) = bad
    assert index == 1 and why.startswith(reason)
    lines, dead = _stored(raw)
    assert [orjson.loads(line)["n"] for line in lines] == [0, 2]
    (letter,) = dead
    assert (letter["offset"], letter["id"], letter["peer"], letter["path"]) == (1, "fwd:c:1", "p", "forward://p")
    assert str(letter["reason"]).startswith(reason) and ("line" in letter or "line_base64" in letter)


@pytest.mark.parametrize("option", [{}, {"size": 2}, {"size": 1}, {"size": 3}, {"size": 0}, {"size": "two"}])
def test_the_size_option_is_not_trusted(option: dict[str, object]) -> None:
    first = msgpack.packb([1, {"a": 1}])
    raw = first + msgpack.packb([2, {"b": b"\x00"}])
    message = decode(roundtrip(["t", raw, option]), 1 << 20)
    assert message.packed == raw and unpack_records(message.packed or b"", "t")[0] == [
        {"a": 1, "t": 1.0}, {"b": b"\x00", "t": 2.0}]


def test_a_chunk_is_stored_the_same_whatever_the_slices_it_is_decoded_in() -> None:
    """Entries that are not maps, maps that cannot be stored (a bin key: ormsgpack refuses its slice, msgpack
    decodes it), entries msgpack refuses and bytes after the last entry, spread over the chunk: every slice
    size gives the lines, offsets (indices among the maps) and bad entries of the chunk decoded whole."""
    def event_time(n: int) -> msgpack.ExtType:
        return msgpack.ExtType(0, struct.pack(">II", 1_700_000_000 + n, 0))

    entries, maps, stored, entry_bad, map_bad = [], 0, [], [], []
    for n in range(40):
        if n % 9 == 4:
            entries.append(msgpack.packb([n, "not a map"]))
            entry_bad.append((n, "record is not a map"))
        elif n % 13 == 7:
            entries.append(msgpack.packb([msgpack.ExtType(5, b"x"), {"n": n}]))
            entry_bad.append((n, "entry cannot be decoded: unknown msgpack extension type 5 (1 bytes)"))
        elif n % 9 == 6:
            entries.append(msgpack.packb([event_time(n), {b"k": n}], use_bin_type=True))
            map_bad.append(maps)
            maps += 1
        else:
            entries.append(msgpack.packb([event_time(n), {"n": n, "text": "é" * (n * 7)}]))
            stored.append((maps, n))
            maps += 1
    raw = b"".join(entries) + b"\xc1"  # a byte that is no msgpack: one more bad entry, the 41st
    whole = serialise_packed(raw, {"h": 1}, "t", 0.0, slice_bytes=len(raw))
    assert whole.offsets == [index for index, _ in stored]
    assert [orjson.loads(line)["n"] for line in whole.lines] == [n for _, n in stored]
    assert whole.times == [1_700_000_000.0 + n for _, n in stored]
    assert [(index, reason) for index, _, reason in whole.bad[:len(entry_bad)]] == entry_bad
    assert whole.bad[len(entry_bad)][0] == 40 and whole.bad[len(entry_bad)][1] == b"\xc1"
    assert [index for index, _, _ in whole.bad[len(entry_bad) + 1:]] == map_bad
    assert all(reason.startswith("record cannot be stored as JSON") for _, _, reason in whole.bad[len(entry_bad) + 1:])
    assert len(whole.offsets) + len(whole.bad) == 41  # every entry counted once
    assert len(list(unpacked_slices(raw, "t", 50))) > 10  # the sizes below do cut the chunk
    for size in (1, 50, 333, 4096):
        assert serialise_packed(raw, {"h": 1}, "t", 0.0, slice_bytes=size) == whole
    records, bad = unpack_records(raw, "t")
    assert len(records) == maps and [index for index, _, _ in bad] == [n for n, _ in entry_bad] + [40]


def test_a_commit_point_whose_fsync_failed_is_cut_back_so_a_restart_does_not_take_its_chunks_for_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import durability

    journal = ChunkJournal(tmp_path / "forward" / "fluent", 600.0, lambda: 1000.0)
    assert journal.load(0) == []
    journal.write(1, ["a"], point=True)
    real_sync, failures = durability.sync, [OSError(errno.EIO, "Input/output error")]

    def sync_failing_once(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_sync(fd)

    monkeypatch.setattr(durability, "sync", sync_failing_once)
    with pytest.raises(OSError):
        journal.write(2, ["b"], point=True)  # the commit is undone (its frames cut back) and retried
    assert committed_seq(tmp_path) == 1, "a kill -9 now must not find commit 2's point"
    journal.write(2, ["b"], point=True)  # the retry
    assert committed_seq(tmp_path) == 2
    assert [chunk for _, chunk in journal.load(2)] == ["a", "b"]


def test_commits_failing_longer_than_the_window_never_delete_the_segment_of_the_newest_commit_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import durability

    now = [1000.0]
    journal = ChunkJournal(tmp_path / "forward" / "fluent", 600.0, lambda: now[0])
    journal.load(0)
    journal.write(1, ["a"], point=True)
    journal.write(2, ["b"], point=True)

    def disk_full(fd: int, pieces: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durability, "write_all", disk_full)
    for minutes in (11, 22, 33):  # each failed attempt rolls over to a new, empty segment
        now[0] = 1000.0 + minutes * 60
        with pytest.raises(OSError):
            journal.write(3, ["c"], point=True)
    monkeypatch.undo()
    assert committed_seq(tmp_path) == 2, "a restart now still finds commit 2's point"
    journal.write(3, ["c"], point=True)  # the disk has room again
    now[0] += 11 * 60
    journal.write(4, ["d"], point=True)  # rolls over: the old segments may go now
    assert committed_seq(tmp_path) == 4
    assert len(list((tmp_path / "forward" / "fluent").glob("chunks-*.jsonl"))) <= 3


def test_short_writes_still_append_whole_journal_lines_and_dead_letters(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk nearly full (or RLIMIT_FSIZE) lets the kernel write part of what it was given, without an error.
    from pipeline.deadletter import DeadLetterStore

    real_write, real_writev = os.write, os.writev
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:7]))
    monkeypatch.setattr(os, "writev", lambda fd, buffers: real_writev(fd, [bytes(buffers[0])[:7]]))
    journal = ChunkJournal(tmp_path / "forward" / "fluent", 600.0, lambda: 1000.0)
    assert journal.load(0) == []
    journal.write(1, ["chunk-one", "chunk-two"], point=True)
    journal.write(2, ["chunk-three"], point=True)
    store = DeadLetterStore(tmp_path / "dead")
    store.prepare()
    store.write([b'{"id": "one"}\n', b'{"id": "two"}\n'])
    monkeypatch.undo()
    assert committed_seq(tmp_path) == 2
    assert [chunk for _, chunk in journal.load(2)] == ["chunk-one", "chunk-two", "chunk-three"]
    [letters] = (tmp_path / "dead").glob("records-*.jsonl")
    assert [orjson.loads(line)["id"] for line in letters.read_bytes().splitlines()] == ["one", "two"]


def test_a_chunk_id_that_is_not_utf8_is_a_protocol_error() -> None:
    raw = msgpack.packb(["t", 1, {"k": 1}, {"chunk": "PLACEHOLDER"}]).replace(b"\xabPLACEHOLDER", b"\xa2\xff\xfe")
    stream = unpacker(1 << 20)
    stream.feed(raw)
    with pytest.raises(ProtocolError, match="option chunk is not valid UTF-8"):
        decode(next(stream), 1 << 20)


def test_the_chunk_journal_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        journal = ChunkJournal(tmp_path / "forward" / "fluent", 600.0, lambda: 1000.0)
        journal.load(0)
        journal.write(1, ["c1"])
    finally:
        os.umask(old)
    made = [tmp_path / "forward", tmp_path / "forward" / "fluent", *(tmp_path / "forward" / "fluent").iterdir()]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in made} == {
        "forward": "0o750", "fluent": "0o750", "chunks-1000.jsonl": "0o640"}
