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

PackedForward entries, where nearly all the bytes are, are only checked for framing here
(:func:`packed_entries`) and decoded where the records are processed: in a parse worker when
``parse_workers`` is set, else on the loop (:mod:`pipeline.transforms.packed`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from pipeline.transforms import packed
from pipeline.transforms.packed import entry_ends, whole_objects
from pipeline.transforms.packed import shape as _shape


class ProtocolError(Exception):
    """The peer sent something that is not a Forward Protocol message: its connection is closed."""


class TooLarge(ProtocolError):
    """A message or chunk beyond the configured limit."""


def ext_hook(code: int, data: bytes) -> object:
    """msgpack extension decoder: type 0 (EventTime) becomes epoch seconds (see :func:`packed.ext_hook`);
    any other type is a ``ProtocolError``.

    >>> ext_hook(0, bytes.fromhex("6553f10017d78400"))
    1700000000.4
    """
    try:
        return packed.ext_hook(code, data)
    except packed.BadEntry as exc:
        raise ProtocolError(str(exc)) from exc


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

    A PackedForward message keeps its entries as the msgpack stream (``packed``, undecoded, whole
    objects ending at ``ends``) and ``entries`` is empty.
    """

    tag: str
    entries: list[tuple[object, object]]
    chunk: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    packed: bytes | None = None
    ends: list[int] = field(default_factory=list)


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
        return _message(tag, [], options, raw, packed_entries(raw))
    else:  # Message
        if len(obj) < 3:
            raise ProtocolError("Message mode needs [tag, time, record]")
        options = _options(obj, 3)
        entries = [(second, obj[2])]
    return _message(tag, entries, options)


def _message(tag: str, entries: list[tuple[object, object]], options: dict[str, Any], raw: bytes | None = None,
             ends: list[int] | None = None) -> Message:
    chunk = options.get("chunk")
    if chunk is not None and not isinstance(chunk, str):
        raise ProtocolError(f"option chunk must be a string, got {_shape(chunk)}")
    return Message(tag, entries, chunk, options, raw, ends or [])


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


def packed_entries(raw: bytes) -> list[int]:
    """Where each entry of a PackedForward stream ends; ``ProtocolError`` unless it is whole msgpack objects.

    Only the framing is checked here, on the event loop, without building the records: they are
    decoded where they are processed (:mod:`pipeline.transforms.packed`), and an entry that is whole
    msgpack but no ``[time, record]`` map is dead-lettered there, its neighbours stored.

    >>> packed_entries(bytes.fromhex("92 01 81 a1 6b a1 76  92 02 81 01 c3"))
    [7, 12]
    """
    ends = entry_ends(raw)
    if ends is None:
        read, _ = whole_objects(raw)  # the ends of the objects before the fault
        last = read[-1] if read else 0
        raise ProtocolError(f"bad PackedForward entries: cut short or not msgpack after {last} of {len(raw)} bytes")
    return ends


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
