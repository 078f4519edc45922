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

PackedForward entries, where nearly all the bytes are, go through ormsgpack when it gives
what msgpack gives: a quarter less time on the event loop (see :func:`unpack_entries`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import ormsgpack


class ProtocolError(Exception):
    """The peer sent something that is not a Forward Protocol message: its connection is closed."""


class TooLarge(ProtocolError):
    """A message or chunk beyond the configured limit."""


_EVENT_TIME = struct.Struct(">II")


def ext_hook(code: int, data: bytes) -> object:
    """msgpack extension decoder: type 0 (EventTime) becomes epoch seconds; any other type is refused.

    A float rather than an :class:`EventTime`: this runs once per record, and a float is all
    the time key needs (microseconds survive).

    >>> ext_hook(0, bytes.fromhex("6553f10017d78400"))
    1700000000.4
    """
    if code == 0 and len(data) == 8:
        seconds, nanos = _EVENT_TIME.unpack(data)
        return seconds + nanos / 1e9
    raise ProtocolError(f"unknown msgpack extension type {code} ({len(data)} bytes)")


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
    """One decoded message: its tag, entries (time, record: 2-tuples or, from PackedForward, 2-lists), options."""

    tag: str
    entries: list[tuple[object, object]]
    chunk: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def decode(obj: object, chunk_limit: int) -> Message:
    """A message from one unpacked msgpack object; ``ProtocolError`` when it is not one."""
    if not isinstance(obj, list | tuple) or len(obj) < 2 or not isinstance(obj[0], str):
        raise ProtocolError(f"not a forward message (expected [tag, ...], got {_shape(obj)})")
    tag, second = obj[0], obj[1]
    if isinstance(second, list):  # Forward
        options = _options(obj, 2)
        entries = [_entry(e) for e in second]
    elif isinstance(second, bytes | str):  # PackedForward, maybe compressed
        options = _options(obj, 2)
        raw = second.encode("utf-8", "surrogateescape") if isinstance(second, str) else second
        if options.get("compressed") == "gzip":
            raw = gunzip(raw, chunk_limit)
        elif len(raw) > chunk_limit:
            raise TooLarge(f"chunk of {len(raw)} bytes exceeds chunk_limit_bytes = {chunk_limit}")
        entries = unpack_entries(raw)
    else:  # Message
        if len(obj) < 3:
            raise ProtocolError("Message mode needs [tag, time, record]")
        options = _options(obj, 3)
        entries = [(second, obj[2])]
    chunk = options.get("chunk")
    if chunk is not None and not isinstance(chunk, str):
        raise ProtocolError(f"option chunk must be a string, got {_shape(chunk)}")
    return Message(tag, entries, chunk, options)


def _options(obj: list[Any] | tuple[Any, ...], index: int) -> dict[str, Any]:
    if len(obj) <= index or obj[index] is None:
        return {}
    if len(obj) > index + 1 or not isinstance(obj[index], dict):
        raise ProtocolError(f"option must be a map, got {_shape(obj[index])}")
    options: dict[str, Any] = obj[index]
    return options


def _entry(entry: object) -> tuple[object, object]:
    if not isinstance(entry, list | tuple) or len(entry) != 2:
        raise ProtocolError(f"an entry must be [time, record], got {_shape(entry)}")
    return entry[0], entry[1]


def unpack_entries(raw: bytes) -> list[tuple[object, object]]:
    """The [time, record] entries concatenated in a PackedForward stream (as 2-lists: the hot path).

    ormsgpack decodes them when it can: a 1,000-entry chunk of ~1 KB records took 2.6 ms
    (count and decode) instead of msgpack's 3.6 ms (benchmarks/forward_codec.py, 2-core Xeon VM).
    It decodes one object, so the entries are counted first (msgpack's ``skip``, which builds no
    objects: 0.3 ms) and decoded as one array of that many: the client's ``size`` option is not
    trusted, and a stream that does not split into whole objects never reaches ormsgpack.
    Whatever ormsgpack refuses (a key that is not a string, text that is not UTF-8, an extension
    other than EventTime) is decoded by msgpack, whose rules (and errors) stay the source's.

    >>> unpack_entries(bytes.fromhex("92 01 81 a1 6b a1 76  92 02 81 01 c3"))
    [[1, {'k': 'v'}], [2, {1: True}]]
    """
    entries = _ormsgpack_entries(raw)
    if entries is None:
        return _msgpack_entries(raw)
    for item in entries:
        if type(item) is not list or len(item) != 2:  # no call per entry: this loop runs per record
            _entry(item)  # raises with the shape
    return entries


def _ormsgpack_entries(raw: bytes) -> list[Any] | None:
    """The objects in ``raw`` decoded by ormsgpack; None for a stream it does not decode as msgpack does."""
    count = _count(raw)
    if count is None:
        return None  # cut short or not msgpack: msgpack says how
    try:
        entries: list[Any] = ormsgpack.unpackb(_ARRAY32.pack(0xDD, count) + raw, ext_hook=ext_hook)
    except ValueError:  # ormsgpack.MsgpackDecodeError, and an ext_hook's refusal
        return None
    return entries


_ARRAY32 = struct.Struct(">BI")  # msgpack's array 32 header: 0xdd, then the count


def _count(raw: bytes) -> int | None:
    """How many whole msgpack objects ``raw`` holds, if it is nothing but whole objects (else None)."""
    stream = msgpack.Unpacker(max_buffer_size=max(len(raw), 1))
    stream.feed(raw)
    count, end, skip, tell = 0, 0, stream.skip, stream.tell
    try:
        while True:
            skip()
            count += 1
            end = tell()  # after a skip cut short, tell() counts the partial object's bytes too
    except msgpack.OutOfData:
        pass
    except (ValueError, msgpack.FormatError, msgpack.StackError):
        return None
    return count if end == len(raw) and count <= 0xFFFFFFFF else None


def _msgpack_entries(raw: bytes) -> list[tuple[object, object]]:
    """:func:`unpack_entries` by msgpack alone, with its errors as ``ProtocolError``."""
    stream = msgpack.Unpacker(raw=False, ext_hook=ext_hook, max_buffer_size=max(len(raw), 1),
                              strict_map_key=False, unicode_errors="surrogateescape")
    stream.feed(raw)
    entries: list[Any] = []
    append, tell = entries.append, stream.tell
    end = 0  # tell() after the last whole entry: after a failed partial read it counts the partial bytes too
    try:
        for item in stream:
            if type(item) is not list or len(item) != 2:
                _entry(item)
            append(item)
            end = tell()
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # TypeError: a map keyed by an array or a map (unhashable), which no record can be
        raise ProtocolError(f"bad PackedForward entries: {exc}") from exc
    if end != len(raw):
        raise ProtocolError(f"PackedForward entries cut short ({len(raw) - end} bytes left over)")
    return entries


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


def event_epoch(value: object) -> float | None:
    """Epoch seconds of an entry's time (EventTime, decoded to a float, or an integer); None otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _shape(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"
