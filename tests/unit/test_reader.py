"""read_step on real files: only whole lines, long and oversized lines, rotated files, identity."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sources.tail.heads import FP_BYTES, fingerprint
from pipeline.sources.tail.reader import (
    RWF_NOWAIT,
    CachedReader,
    NotCached,
    ReadResult,
    TailedFile,
    file_key,
    read_step,
)

READ = 4096
MAX_LINE = 16 * 1024


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "agent.jsonl"
    path.write_bytes(b"")
    return path


@pytest.fixture
def tf(log: Path) -> Iterator[TailedFile]:
    fd = os.open(log, os.O_RDONLY)
    tailed = TailedFile("agent", file_key(os.fstat(fd)), str(log), fd, 0)
    yield tailed
    tailed.close()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def step(
    tf: TailedFile, tmp_path: Path, read: int = READ, max_line: int = MAX_LINE, at_eof: bool = False
) -> ReadResult | None:
    return read_step(tf, read, max_line, lambda t, offset: tmp_path / f"blob-{offset}.line", at_eof)


def test_returns_only_whole_lines(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    append(log, b'{"a":1}\n{"b":2}\n{"c":')

    result = step(tf, tmp_path)

    assert result is not None
    assert (result.start, result.end, result.data) == (0, 16, b'{"a":1}\n{"b":2}\n')
    assert tf.offset == 16 and result.dead == []


def test_partial_last_line_waits_for_its_newline(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    append(log, b'{"a":1}\n{"b":')
    assert step(tf, tmp_path) is not None

    assert step(tf, tmp_path) is None, "half a line is not a line"
    assert tf.offset == 8
    append(log, b"2}")
    assert step(tf, tmp_path) is None
    append(log, b"\n")

    result = step(tf, tmp_path)
    assert result is not None and (result.start, result.end, result.data) == (8, 16, b'{"b":2}\n')
    assert step(tf, tmp_path) is None, "nothing more at the end of the file"


def test_empty_file_reads_nothing(tf: TailedFile, tmp_path: Path) -> None:
    assert step(tf, tmp_path) is None
    assert step(tf, tmp_path, at_eof=True) is None
    assert tf.offset == 0


def test_block_boundary_inside_a_line_returns_the_lines_before_it(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 100) for i in range(100)]
    append(log, b"".join(lines))
    got = b""
    while (result := step(tf, tmp_path)) is not None:
        assert result.data.endswith(b"\n") and len(result.data) <= READ
        assert result.start == len(got)
        got += result.data
    assert got == b"".join(lines)


def test_line_longer_than_a_read_but_within_max_line_is_returned_whole(
    tf: TailedFile, log: Path, tmp_path: Path
) -> None:
    long_line = b'{"text":"' + b"y" * (3 * READ) + b'"}\n'
    append(log, long_line + b'{"next":1}\n')

    result = step(tf, tmp_path)

    assert result is not None and result.data == long_line
    assert tf.offset == len(long_line)
    result = step(tf, tmp_path)
    assert result is not None and result.data == b'{"next":1}\n'
    assert list(tmp_path.glob("blob-*")) == []


def test_long_unfinished_line_waits(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    append(log, b"z" * (2 * READ + 10))
    assert step(tf, tmp_path) is None
    assert tf.offset == 0 and tf.oversized is None
    append(log, b"\n")
    result = step(tf, tmp_path)
    assert result is not None and len(result.data) == 2 * READ + 11


def test_oversized_line_is_streamed_to_a_blob(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    head = b'{"ok":1}\n'
    huge = b"h" * (MAX_LINE + 5000)
    append(log, head + huge + b'\n{"ok":2}\n')

    first = step(tf, tmp_path)
    assert first is not None and first.data == head

    oversized = step(tf, tmp_path)

    assert oversized is not None
    assert oversized.data == b""
    assert (oversized.start, oversized.end) == (len(head), len(head) + len(huge) + 1)
    (entry,) = oversized.dead
    assert entry["offset"] == len(head) and entry["length"] == len(huge)
    assert "max_line_bytes" in entry["reason"]
    blob = tmp_path / f"blob-{len(head)}.line"
    # the blob keeps the first max_line_bytes (the rest stays in the source file, offsets given)
    assert entry["blob"] == str(blob) and blob.read_bytes() == huge[:MAX_LINE]
    assert entry["truncated"] is True and entry["blob_bytes"] == MAX_LINE
    assert tf.offset == len(head) + len(huge) + 1 and tf.oversized is None

    after = step(tf, tmp_path)
    assert after is not None and after.data == b'{"ok":2}\n'


def test_line_of_exactly_max_line_bytes_is_kept(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    line = b"m" * MAX_LINE + b"\n"
    append(log, line)
    result = step(tf, tmp_path)
    assert result is not None and result.data == line and result.dead == []


def test_line_over_max_line_but_shorter_than_a_read_goes_to_the_dead_letters(
    tf: TailedFile, log: Path, tmp_path: Path
) -> None:
    """max_line_bytes may be set below read_bytes (1 KiB vs the 1 MiB default): the limit must still hold."""
    line = b'{"t":"' + b"q" * 3000 + b'"}'
    append(log, line + b"\n")

    result = step(tf, tmp_path, read=65536, max_line=1024)

    assert result is not None
    assert result.data == b"", "a line over max_line_bytes must not become a record"
    assert [e["length"] for e in result.dead] == [len(line)]


def test_oversized_line_still_being_written_is_streamed_across_steps(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    part1 = b"p" * (MAX_LINE + 100)
    append(log, part1)
    assert step(tf, tmp_path) is None, "over the limit already, but not finished"
    assert tf.oversized is not None
    part2 = b"q" * 7000
    append(log, part2)
    assert step(tf, tmp_path) is None
    append(log, b'\n{"after":1}\n')

    result = step(tf, tmp_path)

    assert result is not None and result.dead[0]["length"] == len(part1) + len(part2)
    assert (tmp_path / "blob-0.line").read_bytes() == (part1 + part2)[:MAX_LINE]
    after = step(tf, tmp_path)
    assert after is not None and after.data == b'{"after":1}\n'


def test_at_eof_is_eol_returns_a_final_unterminated_line(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    append(log, b'{"a":1}\n{"last":true}')
    assert step(tf, tmp_path, at_eof=True) is not None

    result = step(tf, tmp_path, at_eof=True)

    assert result is not None
    assert result.data == b'{"last":true}\n', "a newline is supplied so the line parses as one"
    assert (result.start, result.end) == (8, 21) and tf.offset == 21, "the offset is the file's real end"
    assert step(tf, tmp_path, at_eof=True) is None


def test_at_eof_is_eol_with_a_long_final_line(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    line = b"L" * (2 * READ + 1)
    append(log, line)
    result = step(tf, tmp_path, at_eof=True)
    assert result is not None and result.data == line + b"\n" and tf.offset == len(line)


def test_at_eof_is_eol_ends_an_oversized_line(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    line = b"O" * (MAX_LINE + 10)
    append(log, line)
    result = step(tf, tmp_path, at_eof=True)
    assert result is not None and result.dead[0]["length"] == len(line)
    assert tf.offset == len(line)


def test_fingerprint_tells_files_apart(tmp_path: Path, tf: TailedFile, log: Path) -> None:
    append(log, b'{"first":"file"}\n')
    tf.refresh_fingerprint()
    assert tf.fp_len == 17

    other = tmp_path / "other.jsonl"
    other.write_bytes(b'{"other":"file"}\n')
    fd = os.open(other, os.O_RDONLY)
    try:
        assert fingerprint(fd, FP_BYTES) != (tf.fp, tf.fp_len)
    finally:
        os.close(fd)

    assert tf.matches(tf.fp, tf.fp_len)
    append(log, b'{"more":1}\n')
    assert tf.matches(tf.fp, tf.fp_len), "a file that grew still starts with the same bytes"
    saved = (tf.fp, tf.fp_len)
    log.write_bytes(b'{"fresh":"content"}\n')  # truncated and rewritten in place
    assert not tf.matches(*saved)


def test_fingerprint_grows_with_a_short_file_then_stops(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    tf.refresh_fingerprint()
    assert tf.fp_len == 0
    append(log, b"a" * 10 + b"\n")
    step(tf, tmp_path)
    assert tf.fp_len == 11
    append(log, b"b" * (2 * FP_BYTES) + b"\n")
    step(tf, tmp_path)
    assert tf.fp_len == FP_BYTES
    fixed = tf.fp
    append(log, b"c\n")
    step(tf, tmp_path)
    assert tf.fp == fixed


def test_position_carries_identity(tf: TailedFile, log: Path) -> None:
    append(log, b"x\n")
    tf.refresh_fingerprint()
    pos = tf.position(2)
    assert (pos.source, pos.key, pos.path, pos.offset) == ("agent", tf.key, str(log), 2)
    assert (pos.fingerprint, pos.fp_len) == (tf.fp, tf.fp_len)
    st = os.stat(log)
    assert tf.key == f"{st.st_dev}:{st.st_ino}"


# -- CachedReader: the same step on the event loop, for bytes already in the page cache ----------

HEAD = b'{"session":"start","pad":"' + b"x" * FP_BYTES + b'"}\n'  # a first line longer than the fingerprint


def started(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    """The file's first line read through the blocking step, as the source does first."""
    append(log, HEAD)
    assert step(tf, tmp_path) is not None and tf.fp_len == FP_BYTES


@pytest.mark.skipif(RWF_NOWAIT is None, reason="no RWF_NOWAIT on this platform")
def test_cached_read_returns_whole_lines_like_the_blocking_step(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    started(tf, log, tmp_path)
    append(log, b'{"a":1}\n{"b":2}\n{"c":')
    reader = CachedReader(READ)

    result = reader.read(tf)

    assert result is not None and result.data == b'{"a":1}\n{"b":2}\n'
    assert (result.start, result.end) == (len(HEAD), len(HEAD) + 16) and tf.offset == result.end
    with pytest.raises(NotCached):  # only half a line left: the blocking step decides what it is
        reader.read(tf)
    append(log, b"3}\n")
    result = reader.read(tf)
    assert result is not None and result.data == b'{"c":3}\n'
    assert reader.read(tf) is None, "nothing new"


@pytest.mark.skipif(RWF_NOWAIT is None, reason="no RWF_NOWAIT on this platform")
def test_cached_read_leaves_a_rewritten_or_truncated_file_to_the_blocking_step(
    tf: TailedFile, log: Path, tmp_path: Path
) -> None:
    started(tf, log, tmp_path)
    reader = CachedReader(READ)
    log.write_bytes(b'{"other":"file"}\n' + HEAD)  # rewritten in place, longer than before
    with pytest.raises(NotCached):
        reader.read(tf)
    log.write_bytes(b'{"short":1}\n')  # truncated below the offset
    with pytest.raises(NotCached):
        reader.read(tf)


def drop_from_page_cache(path: Path) -> None:
    """Evict a file's pages, written back first (tmpfs keeps them: see page_cache_can_miss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def page_cache_can_miss(tmp_path: Path) -> bool:
    """Whether an evicted file here misses the cache (not on tmpfs), tried on a scratch file.

    Not on the file under test: a missed RWF_NOWAIT read starts the kernel's readahead,
    which would bring the pages back before the step under test looks.
    """
    scratch = tmp_path / "scratch"
    scratch.write_bytes(b"x" * READ)
    drop_from_page_cache(scratch)
    fd = os.open(scratch, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(READ)], 0, RWF_NOWAIT or 0)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@pytest.mark.skipif(RWF_NOWAIT is None, reason="no RWF_NOWAIT on this platform")
def test_cached_read_of_bytes_not_in_memory_falls_back(tf: TailedFile, log: Path, tmp_path: Path) -> None:
    if not page_cache_can_miss(tmp_path):
        pytest.skip("this file system keeps its files in memory (tmpfs): no cache miss to test")
    started(tf, log, tmp_path)
    append(log, b'{"a":1}\n' * 10_000)
    drop_from_page_cache(log)
    reader = CachedReader(READ)

    with pytest.raises(NotCached):
        reader.read(tf)
    assert reader.enabled, "a cache miss is not a reason to stop trying"
    result = step(tf, tmp_path)  # the blocking step reads it from the disk
    assert result is not None and result.data.startswith(b'{"a":1}\n')


def test_cached_read_gives_up_where_the_kernel_cannot(
    tf: TailedFile, log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(tf, log, tmp_path)
    append(log, b'{"a":1}\n')

    def unsupported(*args: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "preadv", unsupported)
    reader = CachedReader(READ)
    with pytest.raises(NotCached):
        reader.read(tf)
    assert not reader.enabled, "every later step goes to the worker thread straight away"
