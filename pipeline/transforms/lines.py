"""The hot loop: a block of lines to enriched, serialised records, their offsets and event times.

Shared by the event loop's :class:`~pipeline.transforms.records.RecordProcessor` and the parse
worker processes (:mod:`pipeline.runtime.parse_pool`), so it imports nothing but orjson and the
time-key parsing: a worker starts in a fraction of the daemon's import time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from mmap import mmap
from typing import Any, overload

import orjson

from pipeline.transforms.parse_json import MAX_EPOCH, describe_error, event_time


@dataclass(slots=True)
class ParsedLines:
    """A block's valid records (enriched, serialised), their offsets and times, and its bad lines."""

    lines: list[bytes]
    offsets: list[int]
    times: list[float]
    bad: list[tuple[int, bytes, str]]  # (offset, line, reason)
    shift: int = 0  # a record's offset less this: where its line starts in the data parsed
    stop: int = 0  # where the block ends in that data


def parse_lines(data: bytes | mmap, base: int, suffix: bytes, added: dict[str, Any], keys: frozenset[str],
                time_key: str, now: float, records: list[dict[str, Any]] | None = None,
                begin: int = 0, stop: int | None = None) -> ParsedLines:
    """Parse, validate and enrich the newline-terminated lines of ``data`` (read at offset ``base``).

    ``suffix`` is ``added`` pre-serialised (``Enricher.suffix``): spliced in place of a record's closing
    brace; a record that cannot take the splice is re-serialised with ``added`` winning.
    ``records``, when given, receives each parsed record for the transforms. ``data[begin:stop]`` is the
    block when ``data`` holds more (a parse worker's shared memory, read in place rather than copied).
    """
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    out: list[bytes] = []
    offsets: list[int] = []
    times: list[float] = []
    bad: list[tuple[int, bytes, str]] = []
    view, find, join = memoryview(data), data.find, b"".join
    pos, size = begin, len(data) if stop is None else stop
    base -= begin
    while pos < size:
        # Slices of one memoryview: no copy per line until the enriched record is built.
        end = find(b"\n", pos, size)  # bounded: in shared memory, bytes past the block are another's
        if end < 0:  # a block's lines all end in a newline; should one not, it still ends at the block
            end = size
        line = view[pos:end]
        try:
            record = loads(line)
        except decode_error as exc:
            raw = bytes(line)
            bad.append((base + pos, raw, describe_error(raw, exc)))
            pos = end + 1
            continue
        if type(record) is not dict:
            bad.append((base + pos, bytes(line), "not a JSON object"))
            pos = end + 1
            continue
        if record and data[end - 1] == 125 and keys.isdisjoint(record):  # 125: "}"
            out.append(join((view[pos : end - 1], suffix)))
        else:
            record.update(added)
            # Copied out: orjson's own result holds at least 4 KiB however short the record,
            # which thousands of small records in flight would multiply.
            out.append(bytes(memoryview(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))))
        offsets.append(base + pos)
        if records is not None:  # kept for the transforms: they read what was parsed, not parse again
            records.append(record)
        stamp = record.get(time_key)
        times.append(stamp if type(stamp) is float and 0.0 <= stamp <= MAX_EPOCH else event_time(stamp, now))
        pos = end + 1
    return ParsedLines(out, offsets, times, bad, base, size)


def serialise_records(records: list[dict[Any, Any]], added: dict[str, Any], time_key: str, now: float,
                      kept: list[dict[Any, Any]] | None = None) -> ParsedLines:
    """Records a source decoded (forward's maps): enrich (``added`` wins) and serialise each once.

    Offsets are the records' indices; a record that cannot be stored as JSON is bad at its index
    (see :func:`shown`). ``kept``, when given, receives each stored record for the transforms.
    """
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    out: list[bytes] = []
    offsets: list[int] = []
    times: list[float] = []
    bad: list[tuple[int, bytes, str]] = []
    for index, record in enumerate(records):
        record.update(added)
        try:
            # OPT_NON_STR_KEYS only for the rare map with other keys (msgpack allows them): on every
            # record it made orjson ~25% slower (1 KB forward records: 0.77 -> 0.97 ms per 1,000).
            line = dumps(record, default=_lenient, option=option)
        except (TypeError, orjson.JSONEncodeError):
            try:
                line = dumps(record, default=_lenient, option=option | orjson.OPT_NON_STR_KEYS)
            except (TypeError, orjson.JSONEncodeError) as exc:
                bad.append((index, shown(record), f"record cannot be stored as JSON: {exc}"))
                continue
        out.append(bytes(memoryview(line)))  # copied out: orjson's result holds at least 4 KiB
        offsets.append(index)
        if kept is not None:
            kept.append(record)
        stamp = record.get(time_key)
        times.append(stamp if type(stamp) is float and 0.0 <= stamp <= MAX_EPOCH else event_time(stamp, now))
    return ParsedLines(out, offsets, times, bad)


def shown(value: object) -> bytes:
    """A bad entry or record as the dead-letter store shows it: JSON where it can be, else its repr; a value
    nested too deep for either (msgpack allows 1,024 levels, orjson 255, repr about 1,000) by its type alone.

    >>> shown({1: {2}})
    b'{"1":"{2}"}'
    >>> deep: list[object] = []
    >>> for _ in range(5000):
    ...     deep = [deep]
    >>> shown(deep)
    b'<a list nested too deep to show>'
    """
    try:
        return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return repr(value).encode("utf-8", "replace")
    except RecursionError:
        return f"<a {type(value).__name__} nested too deep to show>".encode()


def shape(value: object) -> str:
    """``value``'s type and size for an error message: never its content (a log line must not carry a record's
    values, and a reason cut short would escape redaction).

    >>> shape({"prompt": "x", "b": 1}), shape("secret"), shape([1, 2]), shape(7)
    ('a map of 2 keys', 'a str of 6 chars', 'a list of 2 items', 'an int')
    """
    names: dict[type, str] = {dict: "map", str: "str", bytes: "bin", list: "list", tuple: "list"}
    name = names.get(type(value))
    if name is None:
        kind = type(value).__name__
        return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"
    unit = {"map": "keys", "str": "chars", "bin": "bytes"}.get(name, "items")
    return f"a {name} of {len(value)} {unit}"  # type: ignore[arg-type]


def _lenient(value: object) -> object:
    """orjson fallback for decoded records: bytes (msgpack bin) as text, lossy where not UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot store a {type(value).__name__}")


class LazyRecords(Sequence[dict[str, Any]]):
    """Records got one at a time by :meth:`get` (an index in range), indexed and sliced as a list is:
    what the transforms are given in place of a list of every record (see :class:`ParsedRecords`)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, index: int) -> dict[str, Any]:
        """The record at ``index`` (0 <= index < len)."""
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self.get(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.get(index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.get(i) for i in range(len(self)))


class ParsedRecords(LazyRecords):
    """A block's valid records as :func:`parse_lines` parsed them (``added`` in those it re-serialised),
    parsed again from the block's lines when read, and kept once read.

    What the transforms are given rather than every record kept: a redact transform reads only the
    few its line filter flags, and a 1 MiB block's records held as dicts take ~4 MB (orjson's strings
    of non-ASCII text), which a parse worker would add to its peak (docs/PERFORMANCE.md §4).
    ``data`` must stay as it was while the records are read (the batch's block, a worker's slot).
    """

    def __init__(self, data: bytes | mmap, parsed: ParsedLines, added: dict[str, Any], keys: frozenset[str]) -> None:
        self.data, self.offsets, self.shift, self.stop = data, parsed.offsets, parsed.shift, parsed.stop
        self.added, self.keys = added, keys
        self.read: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.offsets)

    def get(self, index: int) -> dict[str, Any]:
        """The record at ``index``, parsed from its line the first time it is read."""
        record = self.read.get(index)
        if record is None:
            record = self.read[index] = self._parse(self.offsets[index] - self.shift)
        return record

    def _parse(self, pos: int) -> dict[str, Any]:
        data = self.data
        end = data.find(b"\n", pos, self.stop)
        if end < 0:
            end = self.stop
        record: dict[str, Any] = orjson.loads(data[pos:end])
        if not (record and data[end - 1] == 125 and self.keys.isdisjoint(record)):  # as parse_lines decided
            record.update(self.added)
        return record
