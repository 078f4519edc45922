"""durability: fsync = false skips every fsync; the atomic replace stays atomic either way."""

from __future__ import annotations

import errno
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


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "through-a-buffer"])
def test_copy_range_copies_exactly_the_range_at_the_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    if not kernel_copy:  # e.g. another file system on an old kernel

        def refused(*args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refused)
    source = bytes(range(256)) * 20_000  # 5 MB: more than one buffer
    (tmp_path / "src").write_bytes(source)
    (tmp_path / "dst").write_bytes(b"head:")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY)
    try:
        durability.copy_range(src, dst, 1000, len(source) - 2000, 5)
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == b"head:" + source[1000:-1000]


def test_copy_range_reports_a_source_shorter_than_promised(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x" * 100)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="ended 50 bytes early"):
            durability.copy_range(src, dst, 0, 150, 0)
    finally:
        os.close(src)
        os.close(dst)


@pytest.fixture(params=[0o000, 0o077], ids=["umask0000", "umask0077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """A permissive and a restrictive umask, restored afterwards."""
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_what_is_created_is_owner_and_group_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    durability.make_dirs(tmp_path / "a" / "b")
    fd = durability.open_file(tmp_path / "a" / "b" / "chunk", os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    durability.write_atomic(tmp_path / "a" / "positions.json", b"{}")
    durability.copy_file(tmp_path / "a" / "positions.json", tmp_path / "a" / "copy")
    with open(tmp_path / "a" / "blob", "wb", opener=durability.opener) as blob:
        blob.write(b"x")
    assert [mode(tmp_path / "a"), mode(tmp_path / "a" / "b")] == [0o750, 0o750]
    assert {mode(tmp_path / "a" / n) for n in ("b/chunk", "positions.json", "copy", "blob")} == {0o640}


def test_what_exists_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    shared = tmp_path / "shared"  # an operator's output directory, say
    shared.mkdir()
    shared.chmod(0o2775)
    (shared / "out.jsonl").write_bytes(b"")
    (shared / "out.jsonl").chmod(0o644)
    durability.make_dirs(shared)
    os.close(durability.open_file(shared / "out.jsonl", os.O_WRONLY))
    assert (shared.stat().st_mode & 0o7777, mode(shared / "out.jsonl")) == (0o2775, 0o644)


def test_a_new_directory_is_never_wider_than_0750_not_even_before_its_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under umask 000 a directory made 0777 and chmod-ed after would let anyone plant a file in it meanwhile."""
    seen: list[int] = []
    real_chmod = os.chmod

    def chmod_observed(path: Path, mode_: int) -> None:
        seen.append(mode(Path(path)))  # the mode the directory had until this moment
        real_chmod(path, mode_)

    monkeypatch.setattr(os, "chmod", chmod_observed)
    before = os.umask(0)
    try:
        durability.make_dirs(tmp_path / "a" / "b")
    finally:
        os.umask(before)
    assert seen and all(m & ~0o750 == 0 for m in seen), [oct(m) for m in seen]


def test_a_file_removed_between_the_exclusive_open_and_the_plain_one_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What O_CREAT alone did: an output file rotated away at that moment is not a delivery error."""
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    real_open = os.open

    def rotated_meanwhile(path: Path, flags: int, mode: int = 0o777) -> int:
        try:
            return real_open(path, flags, mode)
        except FileExistsError:
            os.unlink(path)  # logrotate, right after the exclusive open failed
            raise

    monkeypatch.setattr(os, "open", rotated_meanwhile)
    fd = durability.open_file(target, os.O_WRONLY | os.O_APPEND)
    monkeypatch.undo()
    os.write(fd, b"new\n")
    os.close(fd)
    assert target.read_bytes() == b"new\n" and mode(target) == 0o640
