"""PositionStore: positions survive a restart; a damaged file is set aside, never fatal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from pipeline.sources.tail.checkpoint import FilePosition, PositionStore, _crc

A = FilePosition("agent", "8:1", "/logs/a.jsonl", 1234, "0123456789abcdef", 1024)
B = FilePosition("agent", "8:2", "/logs/b.jsonl", 0, "", 0)
C = FilePosition("other", "8:1", "/logs/a.jsonl", 99, "fedcba9876543210", 300)


def saved_store(path: Path) -> PositionStore:
    store = PositionStore(path)
    updates: dict[tuple[str, str], FilePosition | None] = {(p.source, p.key): p for p in (A, B, C)}
    store.save(store.encode(3, updates))
    store.applied(3, updates)
    return store


def test_missing_file_is_a_first_start(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions.json")
    store.load()
    assert (store.existed, store.corrupt, store.commit_seq, store.entries) == (False, False, 0, {})


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    saved_store(path)

    loaded = PositionStore(path)
    loaded.load()

    assert loaded.existed and not loaded.corrupt
    assert loaded.commit_seq == 3
    assert loaded.get("agent", "8:1") == A and loaded.get("agent", "8:2") == B and loaded.get("other", "8:1") == C
    assert sorted(p.key for p in loaded.for_source("agent")) == ["8:1", "8:2"]
    assert loaded.get("agent", "nope") is None
    assert [p.name for p in tmp_path.iterdir()] == ["positions.json"], "no temp file left behind"


def test_a_truncated_files_copy_record_survives_a_restart_and_other_entries_keep_their_fields(tmp_path: Path) -> None:
    truncated = FilePosition("agent", "8:3", "/logs/c.jsonl", 40, "aaaa", 40, "bbbb", 1024, 5000)
    store = PositionStore(tmp_path / "positions.json")
    store.save_now({("agent", "8:1"): A, ("agent", "8:3"): truncated})

    loaded = PositionStore(tmp_path / "positions.json")
    loaded.load()

    assert not loaded.corrupt
    assert loaded.get("agent", "8:3") == truncated and loaded.get("agent", "8:1") == A
    files = {f["key"]: f for f in orjson.loads((tmp_path / "positions.json").read_bytes())["files"]}
    assert "copy_fp" not in files["8:1"]  # a store with no truncate in it is written as before
    assert (files["8:3"]["copy_fp"], files["8:3"]["copy_offset"]) == ("bbbb", 5000)


def test_encode_applies_updates_and_forgets(tmp_path: Path) -> None:
    path = tmp_path / "positions.json"
    store = saved_store(path)
    moved = FilePosition("agent", "8:1", "/logs/a.jsonl", 5000, A.fingerprint, A.fp_len)
    updates: dict[tuple[str, str], FilePosition | None] = {("agent", "8:1"): moved, ("agent", "8:2"): None}

    data = store.encode(4, updates)

    assert store.get("agent", "8:1") == A, "encode alone changes nothing in memory"
    store.save(data)
    store.applied(4, updates)
    loaded = PositionStore(path)
    loaded.load()
    assert loaded.commit_seq == 4
    assert loaded.entries == {("agent", "8:1"): moved, ("other", "8:1"): C}
    assert loaded.entries == store.entries


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated
        lambda raw: b"\x00\xff garbage \x13",
        lambda raw: b"",
        lambda raw: b"[1, 2, 3]",
        lambda raw: b'"just a string"',
        lambda raw: b"{}",
        lambda raw: raw.replace(b"1234", b"1235"),  # valid JSON, checksum no longer matches
        lambda raw: raw.replace(b'"version":1', b'"version":2'),
    ],
)
def test_damaged_store_is_set_aside(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "positions.json"
    saved_store(path)
    raw = path.read_bytes()
    bad = damage(raw)
    assert bad != raw
    path.write_bytes(bad)

    store = PositionStore(path)
    store.load()

    assert store.corrupt and store.existed
    assert store.entries == {}
    assert not path.exists()
    (aside,) = list(tmp_path.glob("positions.json.corrupt-*"))
    assert aside.read_bytes() == bad, "the damaged file is kept for the operator"


def test_entries_with_bad_fields_are_set_aside(tmp_path: Path) -> None:
    """A checksum can match a document whose entries do not fit (an older or foreign writer)."""
    path = tmp_path / "positions.json"
    files = [{"source": "agent", "key": "8:1"}]
    path.write_bytes(orjson.dumps({"version": 1, "commit_seq": 2, "crc": _crc(files), "files": files}))
    store = PositionStore(path)
    store.load()
    assert store.corrupt and store.entries == {}
    assert list(tmp_path.glob("positions.json.corrupt-*"))
