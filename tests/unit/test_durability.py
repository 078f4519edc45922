"""durability: fsync = false skips every fsync; the atomic replace stays atomic either way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import durability


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    yield calls
    durability.configure(True)  # the default, for the tests after this one


@pytest.mark.parametrize("enabled", [True, False])
def test_write_atomic_replaces_the_file_and_fsyncs_only_when_enabled(
    tmp_path: Path, fsync_calls: list[int], enabled: bool
) -> None:
    durability.configure(enabled)
    target = tmp_path / "positions.json"
    target.write_bytes(b"old")

    durability.write_atomic(target, b"new")

    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["positions.json"], "no temporary file left behind"
    assert len(fsync_calls) == (2 if enabled else 0), "the file and its directory"


def test_sync_and_sync_dir_follow_the_switch(tmp_path: Path, fsync_calls: list[int]) -> None:
    fd = os.open(tmp_path / "chunk", os.O_WRONLY | os.O_CREAT)
    try:
        durability.configure(False)
        durability.sync(fd)
        durability.sync_dir(tmp_path)
        assert fsync_calls == []
        durability.configure(True)
        durability.sync(fd)
        durability.sync_dir(tmp_path)
        assert len(fsync_calls) == 2
    finally:
        os.close(fd)
