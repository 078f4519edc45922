"""Forward Protocol v1 messages to records: the four event modes, EventTime, gzip.

A message is one msgpack array (see the Fluentd Forward Protocol Specification v1)::

    Message                  [tag, time, record, option?]
    Forward                  [tag, [[time, record], ...], option?]
    PackedForward            [tag, bin|str of concatenated msgpack [time, record] entries, option?]
    CompressedPackedForward  the same, gzipped, with option {"compressed": "gzip"}

``time`` is an integer (seconds) or the EventTime extension (type 0: big-endian uint32
seconds and uint32 nanoseconds). ``option`` may hold ``chunk`` (the client wants an
``{"ack": chunk}`` once the records are stored), ``size`` (entries, informational) and
``compressed``. msgpack libraries do all the decoding; this module only checks shapes.

PackedForward entries, where nearly all the bytes are, are not looked at here: they are framed and
decoded where the records are processed, in a parse worker when ``parse_workers`` is set, else on the
loop (:mod:`pipeline.transforms.packed`), and what is not whole entries is dead-lettered there.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from pipeline.transforms import packed
from pipeline.transforms.lines import shape as _shape


class ProtocolError(Exception):
    """The peer sent something that is not a Forward Protocol message: its connection is closed."""


class TooLarge(ProtocolError):
    """A message or chunk beyond the configured limit."""


def ext_hook(code: int, data: bytes) -> object:
    """msgpack extension decoder: type 0 (EventTime) becomes epoch seconds (see :func:`packed.ext_hook`);
    any other type stays a ``msgpack.ExtType``, which no record can be stored with: its record goes to the
    dead-letter store (Go's fluent-logger sends a ``time.Time`` as type 5), not its connection down.

    >>> ext_hook(0, bytes.fromhex("6553f10017d78400")), ext_hook(5, b"x")
    (1700000000.4, ExtType(code=5, data=b'x'))
    """
    try:
        return packed.ext_hook(code, data)
    except packed.BadEntry:
        return msgpack.ExtType(code, data)


def pack(obj: object) -> bytes:
    """msgpack bytes of ``obj`` (HELO, PONG, ack replies)."""
    data: bytes = msgpack.packb(obj)
    return data


def unpacker(limit: int) -> msgpack.Unpacker:
    """A streaming decoder for one connection; a message over ``limit`` bytes raises ``BufferFull``."""
    return msgpack.Unpacker(raw=False, ext_hook=ext_hook, max_buffer_size=limit, strict_map_key=False,
                            unicode_errors="surrogateescape")


@dataclass(slots=True)
class Message:
    """One decoded message: its tag, entries (time, record) and options.

    A PackedForward message keeps its entries as the msgpack stream (``packed``, undecoded) and
    ``entries`` is empty.
    """

    tag: str
    entries: list[Any]  # [time, record] pairs, as the client sent them (see packed.stamped)
    chunk: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    packed: bytes | None = None


def decode(obj: object, chunk_limit: int) -> Message:
    """A message from one unpacked msgpack object; ``ProtocolError`` when it is not one."""
    if not isinstance(obj, list | tuple) or len(obj) < 2 or not isinstance(obj[0], str):
        raise ProtocolError(f"not a forward message (expected [tag, ...], got {_shape(obj)})")
    tag, second = obj[0], obj[1]
    if isinstance(second, list):  # Forward
        options = _options(obj, 2)
        entries = second  # one that is not a [time, record] pair is dead-lettered where the records are taken
    elif isinstance(second, bytes | str):  # PackedForward, maybe compressed
        options = _options(obj, 2)
        raw = second.encode("utf-8", "surrogateescape") if isinstance(second, str) else second
        if options.get("compressed") == "gzip":
            raw = gunzip(raw, chunk_limit)
        elif len(raw) > chunk_limit:
            raise TooLarge(f"chunk of {len(raw)} bytes exceeds chunk_limit_bytes = {chunk_limit}")
        return _message(tag, [], options, raw)
    else:  # Message
        if len(obj) < 3:
            raise ProtocolError("Message mode needs [tag, time, record]")
        options = _options(obj, 3)
        entries = [(second, obj[2])]
    return _message(tag, entries, options)


def _message(tag: str, entries: list[Any], options: dict[str, Any],
             raw: bytes | None = None) -> Message:
    chunk = options.get("chunk")
    if chunk is not None and not isinstance(chunk, str):
        raise ProtocolError(f"option chunk must be a string, got {_shape(chunk)}")
    if chunk is not None and not _utf8(chunk):
        # Decoded with surrogates in place of its bad bytes: such an id could not be journalled nor
        # framed (JSON), and a client resending it would fail every commit it is in.
        raise ProtocolError(f"option chunk is not valid UTF-8: {chunk.encode('utf-8', 'surrogateescape')!r}")
    return Message(tag, entries, chunk, options, raw)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _options(obj: list[Any] | tuple[Any, ...], index: int) -> dict[str, Any]:
    if len(obj) <= index or obj[index] is None:
        return {}
    if len(obj) > index + 1 or not isinstance(obj[index], dict):
        raise ProtocolError(f"option must be a map, got {_shape(obj[index])}")
    options: dict[str, Any] = obj[index]
    return options


def gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress one or more gzip members, refusing more than ``limit`` bytes of output."""
    out: list[bytes] = []
    size = 0
    while raw:
        member = zlib.decompressobj(31)
        try:
            data = member.decompress(raw, limit - size + 1)
        except zlib.error as exc:
            raise ProtocolError(f"bad gzip data: {exc}") from exc
        size += len(data)
        if size > limit or member.unconsumed_tail:
            raise TooLarge(f"chunk exceeds chunk_limit_bytes = {limit} once decompressed")
        if not member.eof:
            raise ProtocolError("gzip data cut short")
        out.append(data)
        raw = member.unused_data
    return b"".join(out)
