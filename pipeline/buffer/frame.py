"""The on-disk frame: one batch of records inside a chunk file.

Layout (little endian)::

    magic  b"LFRM"   4
    kind   u8        1   H = chunk header (meta only), D = data
    count  u32       4   records in the payload
    meta   u32       4   length of the JSON meta block
    size   u32       4   length of the payload
    seq    u64       8   commit sequence number that wrote this frame
    crc    u32       4   CRC-32 of the 25 bytes above, the meta and the payload
    meta   bytes         JSON: source, file key, path, batch end, per-record source offsets
    payload bytes        the records, one JSON object per line, each ending in b"\\n"
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from pipeline.buffer.crc import crc32_combine

MAGIC = b"LFRM"
HEADER = struct.Struct("<4sBIIIQ")
CRC = struct.Struct("<I")
PREFIX_SIZE = HEADER.size + CRC.size
KIND_HEADER = ord("H")
KIND_DATA = ord("D")


class FrameError(Exception):
    """A frame could not be decoded: ``torn`` when the file simply ends inside it."""

    def __init__(self, message: str, *, torn: bool) -> None:
        super().__init__(message)
        self.torn = torn


@dataclass(slots=True)
class Frame:
    """A decoded frame."""

    kind: int
    count: int
    seq: int
    meta: dict[str, Any]
    payload: bytes
    size: int  # bytes on disk, prefix included


def encode_parts(kind: int, seq: int, count: int, meta: dict[str, Any], payload: Sequence[bytes],
                 payload_crc: int | None = None) -> list[bytes]:
    """Serialise one frame as pieces to write in order; the payload pieces are not copied.

    ``payload_crc``, when given, is the CRC-32 of the payload pieces joined (a parse worker's):
    combined here rather than computed again.
    """
    meta_bytes = orjson.dumps(meta)
    size = sum(map(len, payload))
    head = HEADER.pack(MAGIC, kind, count, len(meta_bytes), size, seq)
    crc = zlib.crc32(meta_bytes, zlib.crc32(head))
    if payload_crc is not None:
        crc = crc32_combine(crc, payload_crc, size)
    else:
        for piece in payload:
            crc = zlib.crc32(piece, crc)
    return [b"".join((head, CRC.pack(crc), meta_bytes)), *payload]


def encode(kind: int, seq: int, count: int, meta: dict[str, Any], payload: bytes) -> bytes:
    """Serialise one frame as one byte string.

    >>> data = encode(KIND_DATA, 7, 1, {"src": "a"}, b'{"x":1}\\n')
    >>> frame = decode_from(__import__("io").BytesIO(data))
    >>> (frame.seq, frame.count, frame.meta, frame.payload)
    (7, 1, {'src': 'a'}, b'{"x":1}\\n')
    """
    return b"".join(encode_parts(kind, seq, count, meta, [payload]))


def payload_spans(handle: BinaryIO) -> Iterator[tuple[int, int]]:
    """(offset, length) of every data frame's payload, from the start, reading the headers only.

    For outputs that copy the records unchanged, file to file inside the kernel. The
    checksums are not verified here: a chunk is verified when the buffer resumes it at
    start, or was written by this process.
    """
    end = handle.seek(0, 2)
    handle.seek(0)
    while len(prefix := handle.read(PREFIX_SIZE)) == PREFIX_SIZE:
        magic, kind, _count, meta_len, size, _seq = HEADER.unpack_from(prefix)
        if magic != MAGIC or kind not in (KIND_HEADER, KIND_DATA):
            raise FrameError("bad frame magic", torn=False)
        start = handle.seek(meta_len, 1)
        if start + size > end:
            raise FrameError("file ends inside a frame body", torn=True)
        if kind == KIND_DATA and size:
            yield start, size
        handle.seek(size, 1)
    if prefix:
        raise FrameError("file ends inside a frame header", torn=True)


def decode_from(handle: BinaryIO) -> Frame | None:
    """Read the next frame; ``None`` at a clean end of file; FrameError if damaged."""
    prefix = handle.read(PREFIX_SIZE)
    if not prefix:
        return None
    if len(prefix) < PREFIX_SIZE:
        raise FrameError("file ends inside a frame header", torn=True)
    magic, kind, count, meta_len, size, seq = HEADER.unpack_from(prefix)
    if magic != MAGIC or kind not in (KIND_HEADER, KIND_DATA):
        raise FrameError("bad frame magic", torn=False)
    # Two reads, so the payload (megabytes) is never copied out of a larger buffer.
    meta_raw = handle.read(meta_len)
    payload = handle.read(size)
    if len(meta_raw) < meta_len or len(payload) < size:
        raise FrameError("file ends inside a frame body", torn=True)
    (crc,) = CRC.unpack_from(prefix, HEADER.size)
    if zlib.crc32(payload, zlib.crc32(meta_raw, zlib.crc32(prefix[: HEADER.size]))) != crc:
        # A CRC mismatch on the very last frame is a torn write; the caller decides.
        raise FrameError("frame checksum mismatch", torn=False)
    meta = orjson.loads(meta_raw) if meta_len else {}
    return Frame(kind, count, seq, meta, payload, PREFIX_SIZE + meta_len + size)
