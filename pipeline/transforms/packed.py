"""Packed entries to records: a msgpack stream of ``[time, record]`` entries (Forward's PackedForward).

A forward source hands the stream on undecoded, not even framed: it is framed and decoded where the
records are processed, in a parse worker or on the loop, by :func:`serialise_packed`, a slice of entries
at a time (:data:`SLICE_BYTES`). Both give the same records, offsets and bad entries, so a chunk resent
after a crash gets the same ids whichever way it went. An entry that does not decode or is not
``[time, record]`` with a map is one bad entry (dead-lettered with its reason) and its neighbours are
stored; bytes after the last whole entry (an entry cut short, a byte that is not msgpack) are one more
bad entry. Either way the client gets its ack and does not resend a chunk that can never be stored.

Imports only msgpack and ormsgpack (and orjson to show a bad record, and :mod:`pipeline.transforms.lines`,
which every worker has): a parse worker loads this module with its first packed block.

ormsgpack decodes the stream when it can: a 1,000-entry chunk of ~1 KB records took 2.6 ms (count and
decode) instead of msgpack's 3.6 ms (benchmarks/forward_codec.py, 2-core Xeon VM). It decodes one
object, so each slice is decoded as one array of its counted entries (the client's ``size`` option is
not trusted). Whatever ormsgpack refuses (a key that is not a string, text that is not UTF-8, an
extension other than EventTime) is decoded entry by entry by msgpack, whose rules stay the source's
(that slice only: both give the same values where ormsgpack decodes, ``tests/unit/test_forward_codec.py``).
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import msgpack
import ormsgpack

from pipeline.transforms.lines import ParsedLines, serialise_records, shape, shown


class BadEntry(ValueError):
    """An extension msgpack cannot turn into a value of a record (only EventTime can)."""


_EVENT_TIME = struct.Struct(">II")
_ARRAY32 = struct.Struct(">BI")  # msgpack's array 32 header: 0xdd, then the count
MAX_ENTRIES = 0xFFFFFFFF  # the most an array 32 counts


def ext_hook(code: int, data: bytes) -> object:
    """msgpack extension decoder: type 0 (EventTime) becomes epoch seconds; any other type is refused.

    A float rather than an EventTime object: this runs once per record, and a float is all
    the time key needs (microseconds survive).

    >>> ext_hook(0, bytes.fromhex("6553f10017d78400"))
    1700000000.4
    """
    if code == 0 and len(data) == 8:
        seconds, nanos = _EVENT_TIME.unpack(data)
        return seconds + nanos / 1e9
    raise BadEntry(f"unknown msgpack extension type {code} ({len(data)} bytes)")


def whole_objects(raw: bytes) -> tuple[list[int], bool]:
    """Where each whole msgpack object at the start of ``raw`` ends, and whether ``raw`` is nothing else
    (no object cut short, no byte that is not msgpack after them).

    msgpack's ``skip`` builds no objects: ~0.2 ms for 1,000 entries of ~1 KB.
    """
    stream = msgpack.Unpacker(max_buffer_size=max(len(raw), 1))
    stream.feed(raw)
    ends: list[int] = []
    skip, tell, append = stream.skip, stream.tell, ends.append
    try:
        while True:
            skip()
            append(tell())  # after a skip cut short, tell() counts the partial object's bytes too: not appended
    except msgpack.OutOfData:
        pass
    except (ValueError, msgpack.FormatError, msgpack.StackError):
        return ends, False
    return ends, (ends[-1] if ends else 0) == len(raw)


#: A PackedForward chunk is decoded and serialised this many bytes of entries at a time (a slice
#: ends after the entry that reaches it): each slice's maps are serialised and freed before the next
#: slice is decoded, so a 1 MiB chunk's maps (~2.5x its size once decoded) never all live at once.
#: In the parse workers, beside the loop and the kernel's copies on two cores, that measured ~8 %
#: less CPU and ~5 MB less peak RSS than decoding the whole chunk first (docs/PERFORMANCE.md §4).
SLICE_BYTES = 64 << 10


def serialise_packed(raw: bytes, added: dict[str, Any], time_key: str, now: float,
                     kept: list[dict[Any, Any]] | None = None, slice_bytes: int = SLICE_BYTES) -> ParsedLines:
    """``raw``'s entries enriched and serialised, a slice at a time (:data:`SLICE_BYTES`), as one block.

    Offsets are the records' indices among the maps. The bad entries come first, by entry index
    (:func:`unpacked_slices`), then the maps that cannot be stored as JSON, by map index; so the
    block's entries number ``len(offsets) + len(bad)``. ``kept`` receives each stored record.
    """
    lines: list[bytes] = []
    offsets: list[int] = []
    times: list[float] = []
    entries_bad: list[tuple[int, bytes, str]] = []
    maps_bad: list[tuple[int, bytes, str]] = []
    maps = 0
    for records, bad in unpacked_slices(raw, time_key, slice_bytes):
        part = serialise_records(records, added, time_key, now, kept)
        lines += part.lines
        times += part.times
        offsets += [maps + offset for offset in part.offsets] if maps else part.offsets
        maps_bad += [(maps + index, shown, reason) for index, shown, reason in part.bad]
        entries_bad += bad
        maps += len(records)
    return ParsedLines(lines, offsets, times, entries_bad + maps_bad)


def unpack_records(raw: bytes, time_key: str) -> tuple[list[dict[Any, Any]], list[tuple[int, bytes, str]]]:
    """Every map of ``raw``'s entries and every bad entry (:func:`unpacked_slices`), in one slice."""
    records: list[dict[Any, Any]] = []
    bad: list[tuple[int, bytes, str]] = []
    for part, part_bad in unpacked_slices(raw, time_key, max(len(raw), 1)):
        records += part
        bad += part_bad
    return records, bad


def unpacked_slices(raw: bytes, time_key: str, slice_bytes: int
                    ) -> Iterator[tuple[list[dict[Any, Any]], list[tuple[int, bytes, str]]]]:
    """The maps of ``raw``'s entries, each given its entry's time under ``time_key`` unless it has one,
    and the bad entries as (entry index, what to show, reason), ``slice_bytes`` of entries at a time.
    Bytes after the last whole msgpack object (cut short, or not msgpack) are one bad entry, indexed
    after the whole ones, in the last slice.

    The entries are counted here, not taken from the client's ``size``: ormsgpack decodes an array of
    that count and ignores any bytes after it, so a count that was wrong would drop records unseen.
    """
    ends, whole = whole_objects(raw)
    fault = "cut short or not msgpack"
    if len(ends) > MAX_ENTRIES:  # more than the array ormsgpack decodes can count (a chunk over 4 GiB)
        del ends[MAX_ENTRIES:]
        whole, fault = False, f"more than {MAX_ENTRIES} entries"
    first, start = 0, 0
    while first < len(ends):
        stop = min(bisect_left(ends, start + slice_bytes, lo=first) + 1, len(ends))
        piece = raw[start : ends[stop - 1]]
        bad: list[tuple[int, bytes, str]] = []
        entries = _ormsgpack_entries(piece, stop - first)
        if entries is None:
            entries = _msgpack_entries(piece, [end - start for end in ends[first:stop]], bad)
        records = stamped(entries, time_key, bad)
        if bad:
            bad = sorted((first + index, shown, reason) for index, shown, reason in bad)
        yield records, bad
        first, start = stop, ends[stop - 1]
    if not whole:
        yield [], [(len(ends), raw[start:], f"bad PackedForward entries: {fault} after {start} of {len(raw)} bytes")]


def stamped(entries: list[Any], time_key: str, bad: list[tuple[int, bytes, str]]) -> list[dict[Any, Any]]:
    """The maps among ``entries`` ([time, record] pairs, lists or tuples), each given its entry's time
    (EventTime or integer seconds) under ``time_key`` unless it has one; each other entry is added to
    ``bad`` as (index, what to show, reason). Shared by every forward mode."""
    records: list[dict[Any, Any]] = []
    append = records.append
    for index, entry in enumerate(entries):  # per record: no calls in the common case
        if type(entry) not in _PAIRS or len(entry) != 2:
            if entry is not _UNDECODED:
                bad.append((index, shown(entry), f"an entry must be [time, record], got {shape(entry)}"))
            continue
        when, record = entry
        if type(record) is not dict:
            bad.append((index, shown(record), "record is not a map"))
            continue
        if time_key not in record:  # the decoded dict is ours: no copy
            if type(when) is float:  # EventTime, decoded by ext_hook
                record[time_key] = when
            elif type(when) is int:
                record[time_key] = float(when)
        append(record)
    return records


_PAIRS = (list, tuple)  # msgpack's arrays are lists; the forward source's checked entries are tuples


def _ormsgpack_entries(raw: bytes, count: int) -> list[Any] | None:
    """The ``count`` objects in ``raw`` decoded by ormsgpack; None for a stream it does not decode as msgpack does."""
    try:
        entries: list[Any] = ormsgpack.unpackb(_ARRAY32.pack(0xDD, count) + raw, ext_hook=ext_hook)
    except ValueError:  # ormsgpack.MsgpackDecodeError, and an ext_hook's refusal
        return None
    return entries


_UNDECODED = object()  # in place of an entry msgpack refused (its reason is in the bad entries)


def _msgpack_entries(raw: bytes, ends: list[int], bad: list[tuple[int, bytes, str]]) -> list[Any]:
    """Each entry decoded by msgpack alone; one it refuses is a bad entry (its bytes shown) and _UNDECODED."""
    entries: list[Any] = []
    start = 0
    for index, end in enumerate(ends):
        piece = raw[start:end]
        start = end
        try:
            entries.append(msgpack.unpackb(piece, raw=False, ext_hook=ext_hook, strict_map_key=False,
                                           unicode_errors="surrogateescape"))
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            # TypeError: a map keyed by an array or a map (unhashable), which no record can be
            bad.append((index, piece, f"entry cannot be decoded: {exc}"))
            entries.append(_UNDECODED)
    return entries
