"""One followed file: its identity, read position, and the read step (run in a worker thread).

Identity is (device, inode) plus a fingerprint of the first bytes: the inode alone
cannot tell a reused inode from the same file, and content alone cannot tell two files
whose first lines are equal. Empty files need no special case: their fingerprint
covers zero bytes and grows as they do.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.durability import opener, sync
from pipeline.sources.tail.checkpoint import FilePosition
from pipeline.sources.tail.heads import FP_BYTES, fingerprint, head_digest

OVERSIZED_STEP = 64 * 1024 * 1024  # bytes of an oversized line scanned per read step


def last_line_end(fd: int, size: int) -> int:
    """Where the last complete line ends (for starting at the end without a half line)."""
    start = max(0, size - (1 << 20))
    tail = os.pread(fd, size - start, start)
    cut = tail.rfind(b"\n")
    return start + cut + 1 if cut >= 0 else size


def file_key(st: os.stat_result) -> str:
    """``"<dev>:<inode>"``."""
    return f"{st.st_dev}:{st.st_ino}"


@dataclass
class Oversized:
    """A line longer than ``max_line_bytes`` being streamed to the dead-letter store."""

    start: int
    blob: Path
    scanned: int = 0  # bytes of the line copied so far


@dataclass
class TailedFile:
    """A file being followed."""

    source: str
    key: str
    path: str
    fd: int
    offset: int  # next byte to read (always a line start)
    fp: str = ""
    fp_len: int = 0
    copied: tuple[str, int, int] = ("", 0, 0)  # the old content at the last truncate: FilePosition.copy_*
    rotated: bool = False  # no matched path leads here any more
    idle_since: float | None = None
    oversized: Oversized | None = None
    reported: set[str] = field(default_factory=set)

    def position(self, offset: int) -> FilePosition:
        """The position record to commit for ``offset``."""
        return FilePosition(self.source, self.key, self.path, offset, self.fp, self.fp_len, *self.copied)

    def refresh_fingerprint(self) -> None:
        """Extend the fingerprint while the file is shorter than FP_BYTES."""
        if self.fp_len < FP_BYTES:
            self.fp, self.fp_len = fingerprint(self.fd, FP_BYTES)

    def matches(self, fp: str, fp_len: int) -> bool:
        """Whether the file still starts with the bytes a fingerprint was taken of (none: yes)."""
        return fp_len == 0 or fingerprint(self.fd, fp_len) == (fp, fp_len)

    def close(self) -> None:
        """Release the descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


BlobNamer = Callable[["TailedFile", int], Path]


@dataclass(slots=True)
class ReadResult:
    """What one read step found."""

    start: int
    end: int
    data: bytes
    dead: list[dict[str, Any]] = field(default_factory=list)


def read_step(
    tf: TailedFile, read_bytes: int, max_line: int, blob_for: BlobNamer, at_eof_is_eol: bool
) -> ReadResult | None:
    """Read the next block of whole lines from ``tf.offset``; None when nothing complete is there.

    ``at_eof_is_eol`` treats the end of the file as a line end (a rotated file that will
    not grow again); ``blob_for(tf, start)`` names the file an oversized line is copied to.
    """
    tf.refresh_fingerprint()
    read_bytes = min(read_bytes, max_line)  # so every line of a block with a newline fits max_line
    if tf.oversized is not None:
        return _continue_oversized(tf, read_bytes, max_line, at_eof_is_eol)
    data = os.pread(tf.fd, read_bytes, tf.offset)
    if not data:
        return None
    cut = data.rfind(b"\n")
    if cut >= 0:
        return _advance(tf, data[: cut + 1])
    if len(data) < read_bytes:
        return _advance(tf, data + b"\n", consumed=len(data)) if at_eof_is_eol else None
    return _long_line(tf, read_bytes, max_line, blob_for, at_eof_is_eol)


def _advance(tf: TailedFile, data: bytes, consumed: int | None = None) -> ReadResult:
    start = tf.offset
    tf.offset += len(data) if consumed is None else consumed
    return ReadResult(start, tf.offset, data)


def _long_line(
    tf: TailedFile, read_bytes: int, max_line: int, blob_for: BlobNamer, at_eof: bool
) -> ReadResult | None:
    """A line longer than one read: take it whole if within ``max_line``, else stream it aside."""
    scanned = read_bytes  # bytes from tf.offset known to hold no newline
    while scanned <= max_line:
        piece = os.pread(tf.fd, read_bytes, tf.offset + scanned)
        newline = piece.find(b"\n")
        if newline >= 0:
            if scanned + newline > max_line:
                break
            return _advance(tf, os.pread(tf.fd, scanned + newline + 1, tf.offset))
        scanned += len(piece)
        if len(piece) < read_bytes:  # end of file inside the line
            if scanned > max_line:
                break
            if not at_eof:
                return None  # the writer has not finished this line yet
            line = os.pread(tf.fd, scanned, tf.offset)
            return _advance(tf, line + b"\n", consumed=len(line))
    tf.oversized = Oversized(tf.offset, blob_for(tf, tf.offset))
    return _continue_oversized(tf, read_bytes, max_line, at_eof)


def _continue_oversized(tf: TailedFile, read_bytes: int, max_line: int, at_eof: bool) -> ReadResult | None:
    """Copy the oversized line's first ``max_line`` bytes to its blob; finish at its newline.

    Scans at most OVERSIZED_STEP bytes per call (a progress-only result, start == end, lets
    the source serve other files and stop requests in between: a 10 GB line without a
    newline is a real input). The end of a rotated file counts as the line's end.
    """
    state = tf.oversized
    assert state is not None
    # The blob's name is fixed by (source, file, offset): a replay after a crash rewrites it.
    with open(state.blob, "ab" if state.scanned else "wb", opener=opener) as blob:
        budget = OVERSIZED_STEP
        while True:
            piece = os.pread(tf.fd, read_bytes, state.start + state.scanned)
            newline = piece.find(b"\n")
            body = piece if newline < 0 else piece[:newline]
            blob.write(body[: max(0, max_line - state.scanned)])
            if newline < 0:
                state.scanned += len(piece)
                budget -= len(piece)
                if piece and budget > 0:
                    continue
                if piece:
                    return ReadResult(tf.offset, tf.offset, b"")
                if not at_eof:
                    return None
                length, skip = state.scanned, 0
            else:
                length, skip = state.scanned + newline, 1
            blob.flush()
            sync(blob.fileno())
            tf.oversized = None
            tf.offset = state.start + length + skip
            entry = {
                "reason": f"line longer than max_line_bytes ({length} bytes)", "offset": state.start,
                "length": length, "blob": str(state.blob), "blob_bytes": min(length, max_line),
                "truncated": length > max_line,
            }
            return ReadResult(state.start, tf.offset, b"", [entry])


class NotCached(Exception):
    """The cached read cannot serve this step: the blocking read step must (in a worker thread)."""


# Linux 4.14+: a read that returns only what the page cache already holds, never waiting for the disk.
RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


class CachedReader:
    """The read step for the common case, cheap enough for the event loop: bytes already in memory.

    A tailed file is usually read right after it was written, so its new bytes are in the
    page cache. Reading them with ``RWF_NOWAIT`` into a reused buffer costs tens of
    microseconds per MiB, while a worker thread's round trip costs milliseconds of waiting
    for the GIL and the event loop when the loop is busy parsing (benchmarks/catchup.py).
    Anything else (a cache miss, a truncated or replaced file, a line longer than the
    buffer, an incomplete fingerprint) raises NotCached, and the blocking step in
    :func:`read_step` decides.
    """

    def __init__(self, read_bytes: int) -> None:
        self.enabled = RWF_NOWAIT is not None
        self._buffer = bytearray(read_bytes)
        self._view = memoryview(self._buffer)
        self._head = bytearray(FP_BYTES)
        self._end: tuple[str, int] | None = None  # (file key, size) seen by the last cached read

    def reached_end(self, tf: TailedFile) -> bool:
        """Whether the last cached read was of ``tf`` and read it to the size it saw."""
        return self._end == (tf.key, tf.offset)

    def read(self, tf: TailedFile) -> ReadResult | None:
        """The next block of whole lines, None at the end of the file; NotCached if it cannot tell."""
        self._end = None
        if not self.enabled or tf.oversized is not None or tf.fp_len < FP_BYTES:
            raise NotCached
        size = os.fstat(tf.fd).st_size
        self._end = (tf.key, size)
        if size < tf.offset or self._nowait(tf, memoryview(self._head), 0) < FP_BYTES:
            raise NotCached
        if head_digest(self._head) != tf.fp:
            raise NotCached  # rewritten in place: the blocking step resets the file
        if size == tf.offset:
            return None
        got = self._nowait(tf, self._view, tf.offset)
        cut = self._buffer.rfind(b"\n", 0, got)
        if cut < 0:
            raise NotCached  # a long line, or one not finished yet
        return _advance(tf, bytes(self._view[: cut + 1]))

    def _nowait(self, tf: TailedFile, into: memoryview, offset: int) -> int:
        assert RWF_NOWAIT is not None
        try:
            return os.preadv(tf.fd, [into], offset, RWF_NOWAIT)
        except BlockingIOError:
            raise NotCached from None  # not in the page cache
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self.enabled = False  # this file system or kernel has no RWF_NOWAIT: always the thread
            raise NotCached from None
