"""Encode a chunk into an object body: JSON Lines, gzip or zstd, with its Content-MD5.

These functions are CPU-bound and blocking: the output runs them with
``asyncio.to_thread`` (zlib, zstandard and hashlib release the GIL on large buffers).

The body is built in memory, one chunk at a time: the chunk's frames are read one by one
and fed to the compressor, so the memory held is the compressed body (about a fifth
of the chunk for generated LLM logs), or the whole chunk for ``store_as = "json"``.

Encoding is deterministic (the gzip header carries no time stamp), so uploading the
same chunk twice stores the same bytes under the same key.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import zstandard

StoreAs = Literal["json", "gzip", "zstd"]
CONTENT_TYPES: dict[str, str] = {
    "json": "application/x-ndjson",
    "gzip": "application/gzip",
    "zstd": "application/zstd",
}
CONTENT_ENCODINGS: dict[str, str] = {"gzip": "gzip", "zstd": "zstd"}
GZIP_LEVEL = 6


def content_headers(store_as: str, content_encoding: bool) -> dict[str, str]:
    """The object's Content-Type, and its Content-Encoding when asked for.

    By default a compressed object is typed as what it is, a gzip or zstd file (as Fluentd's
    out_s3 does): downloaded, it stays compressed under its ``.gz``/``.zst`` name. With
    ``content_encoding`` it is typed as JSON Lines sent compressed (as Vector's aws_s3 does),
    which browsers and most HTTP clients decompress as they download it.

    >>> content_headers("gzip", False)
    {'ContentType': 'application/gzip'}
    >>> content_headers("zstd", True)
    {'ContentType': 'application/x-ndjson', 'ContentEncoding': 'zstd'}
    >>> content_headers("json", True)
    {'ContentType': 'application/x-ndjson'}
    """
    encoding = CONTENT_ENCODINGS.get(store_as) if content_encoding else None
    if encoding is None:
        return {"ContentType": CONTENT_TYPES[store_as]}
    return {"ContentType": CONTENT_TYPES["json"], "ContentEncoding": encoding}
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class Body:
    """An encoded object body."""

    data: bytes
    content_md5: str  # base64 of the MD5 digest, as the Content-MD5 header wants it
    raw_size: int  # bytes of JSON Lines before compression


@dataclass(frozen=True)
class Part:
    """One part of a multipart upload."""

    number: int  # 1-based
    start: int  # byte range of the body: [start, end)
    end: int
    content_md5: str


def content_md5(data: bytes | memoryview) -> str:
    """The Content-MD5 header value of ``data``.

    >>> content_md5(b"hello")
    'XUFAKrxLKna5cZ2REBfFkg=='
    """
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def compress(payloads: Iterable[bytes], store_as: StoreAs, level: int | None = None) -> tuple[bytes, int]:
    """Join (and compress) JSON Lines blobs; returns (body, bytes before compression).

    ``level`` is the compression level (None: gzip 6, zstd 3).

    >>> import gzip, zstandard
    >>> body, raw = compress([b'{"a":1}\\n', b'{"b":2}\\n'], "gzip")
    >>> gzip.decompress(body), raw
    (b'{"a":1}\\n{"b":2}\\n', 16)
    >>> zstandard.ZstdDecompressor().decompressobj().decompress(compress([b"x\\n"], "zstd")[0])
    b'x\\n'
    >>> compress([b"x\\n", b"y\\n"], "json")
    (b'x\\ny\\n', 4)
    >>> text = [b"the model agent tool call returned %d\\n" % n for n in range(2000)]
    >>> len(compress(text, "gzip", 1)[0]) > len(compress(text, "gzip", 9)[0])
    True
    """
    packer = _packer(store_as, level)
    raw = 0
    pieces: list[bytes] = []
    for payload in payloads:
        raw += len(payload)
        pieces.append(packer.compress(payload))
    pieces.append(packer.flush())
    return b"".join(pieces), raw


def encode(payloads: Iterable[bytes], store_as: StoreAs, level: int | None = None) -> Body:
    """The object body of a chunk's payloads, with its Content-MD5."""
    data, raw = compress(payloads, store_as, level)
    return Body(data, content_md5(data), raw)


def split(data: bytes, part_size: int) -> list[Part]:
    """Cut a body into multipart parts of ``part_size`` bytes (the last one shorter), each with its MD5.

    Parts are byte ranges, not copies: the uploader slices each part when it sends it.

    >>> [(p.number, data[p.start : p.end]) for data in [b"abcdefg"] for p in split(data, 3)]
    [(1, b'abc'), (2, b'def'), (3, b'g')]
    """
    view = memoryview(data)
    parts = []
    for number, start in enumerate(range(0, len(data), part_size), 1):
        end = min(start + part_size, len(data))
        parts.append(Part(number, start, end, content_md5(view[start:end])))
    return parts


class _Packer(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes, /) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def _packer(store_as: StoreAs, level: int | None) -> _Packer:
    if store_as == "gzip":
        return zlib.compressobj(level or GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip wrapper, mtime 0
    if store_as == "zstd":
        return zstandard.ZstdCompressor(level=level or ZSTD_LEVEL).compressobj()
    return _Identity()
