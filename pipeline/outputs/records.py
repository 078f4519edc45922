"""A chunk's records as every output sees them: lines, parsed objects and deterministic ids.

Each record of a frame is a JSON document ending in a newline. Its id is deterministic, so
that delivering it again after a timeout, a crash or a retry names the same record: the
``id_key`` field when the record has a usable one (a non-empty string of at most 512 bytes,
or an integer), else a hash of where the record came from: the source file key and byte
offset (frame meta ``file``/``offs``) plus the raw event time value, so that a recycled
inode cannot give a new record the id of an old one. Elasticsearch uses it as ``_id``;
Kafka carries it in a header.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

MAX_ID_BYTES = 512  # Elasticsearch refuses longer ids


def hashed_id(file: str, offset: int, time_value: object) -> str:
    """The id of a record without a usable id field: 32 hex digits from where it was read.

    >>> hashed_id("2049:1234", 5678, 1795000000.5) == hashed_id("2049:1234", 5678, 1795000000.5)
    True
    >>> len(hashed_id("2049:1234", 5678, None)), hashed_id("2049:1234", 0, None) != hashed_id("2049:1234", 1, None)
    (32, True)
    """
    key = f"{file}:{offset}:".encode() + orjson.dumps(time_value)
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def record_id(value: object) -> str | None:
    """The id field's value as a document id, or None if it cannot be one.

    >>> record_id("abc"), record_id(42), record_id(""), record_id(True), record_id({"a": 1})
    ('abc', '42', None, None, None)
    """
    if type(value) is str:
        return value if 0 < len(value.encode()) <= MAX_ID_BYTES else None
    if type(value) is int:
        return str(value)
    return None


def document_id(record: dict[str, Any], id_key: str, time_key: str, file: str, offset: int) -> str:
    """The record's id: its ``id_key`` field if usable, else :func:`hashed_id` of where it was read.

    >>> document_id({"request_id": "r1"}, "request_id", "timestamp", "2049:7", 0)
    'r1'
    >>> document_id({"timestamp": 5}, "request_id", "timestamp", "2049:7", 0) == hashed_id("2049:7", 0, 5)
    True
    """
    return record_id(record.get(id_key)) or hashed_id(file, offset, record.get(time_key))


def lines(payload: bytes) -> list[memoryview]:
    """The payload's lines (it ends with a newline) as views into it: no copy per record.

    >>> [bytes(line) for line in lines(b'{"a":1}\\n{}\\n')]
    [b'{"a":1}', b'{}']
    """
    view, find = memoryview(payload), payload.find
    found: list[memoryview] = []
    start, size = 0, len(payload)
    while start < size:
        end = find(b"\n", start)
        if end < 0:
            end = size
        found.append(view[start:end])
        start = end + 1
    return found


def parse_object(line: memoryview | bytes) -> dict[str, Any]:
    """The record, or {} if the line is not a JSON object (the destination will say why).

    >>> parse_object(b'{"a":1}'), parse_object(b'[1]'), parse_object(b'nope')
    ({'a': 1}, {}, {})
    """
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {}
    return record if type(record) is dict else {}
