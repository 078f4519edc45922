"""Bulk request bodies built straight from chunk frames.

Each record of a frame is already a JSON document ending in a newline; it goes into the
body as it is, behind its action line ``{"create":{"_index":…,"_id":…}}``. Each line is
parsed once (orjson) only to read its id field and its event time.

Document ids are deterministic (:mod:`pipeline.outputs.records`, shared with the Kafka
output), so sending a document again after a timeout, a crash or a retry cannot index it
twice.

For a data stream (``data_stream = true``) each document also gets the ``@timestamp``
field data streams require, from its event time, unless it has one.

Batches are bounded by bytes and documents, and streamed: the chunk is read frame by
frame, never whole.
"""

from __future__ import annotations

import time
from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.buffer.chunk import Chunk
from pipeline.buffer.frame import Frame
from pipeline.outputs.bulk.config import BulkIndexConfig
from pipeline.outputs.records import document_id, lines, parse_object
from pipeline.transforms.enrich import iso_millis
from pipeline.transforms.parse_json import event_time


class EncodeError(ValueError):
    """A frame cannot be turned into documents (its meta does not match its records)."""


@dataclass(slots=True)
class Document:
    """One record of a chunk, ready for a bulk body."""

    position: int  # record number within the chunk, from 0
    index: str
    doc_id: str
    action: bytes  # the action line, ending in a newline
    # The document as it is in the chunk's frame, without its newline (a view, not a copy),
    # or, for a data stream, a copy with the @timestamp it needs added.
    record: memoryview | bytes
    source: str
    file: str
    path: str
    offset: int

    @property
    def line(self) -> bytes:
        """The document as it is in the chunk, without its newline."""
        return bytes(self.record)

    @property
    def size(self) -> int:
        """Bytes this document adds to a bulk body."""
        return len(self.action) + len(self.record) + 1


def bulk_body(docs: list[Document]) -> bytes:
    """The NDJSON body of a bulk request for ``docs``: the one copy of their records."""
    parts: list[bytes | memoryview] = []
    for doc in docs:
        parts += (doc.action, doc.record, b"\n")
    return b"".join(parts)


class IndexNamer:
    """Index names from event times: strftime of the pattern in UTC, remembered per second.

    Safe to share between the worker threads encoding different chunks at once: the
    remembered (second, name) pair is one attribute, read and replaced whole.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.fixed = "%" not in pattern
        self._last: tuple[int, str] = (-1, pattern)

    def __call__(self, epoch: float) -> str:
        """The index name for an event at ``epoch``.

        >>> IndexNamer("ai-%Y.%m.%d")(1795000000.25)
        'ai-2026.11.18'
        """
        if self.fixed:
            return self.pattern
        second = int(epoch)
        last_second, last_name = self._last
        if second == last_second:
            return last_name
        name = time.strftime(self.pattern, time.gmtime(second))
        self._last = (second, name)
        return name


class BulkEncoder:
    """Turns a chunk into batches of documents, bounded by ``bulk_max_bytes`` and ``bulk_max_docs``."""

    def __init__(self, config: BulkIndexConfig) -> None:
        self.op_type = config.op_type
        self.id_key = config.id_key
        self.time_key = config.time_key
        self.max_bytes = config.bulk_max_bytes
        self.max_docs = config.bulk_max_docs
        self.index_name = IndexNamer(config.index)
        self.data_stream = config.data_stream
        self._prefixes: dict[str, bytes] = {}

    def _action_prefix(self, index: str) -> bytes:
        """``{"create":{"_index":"…","_id":`` for ``index``, built once per index name.

        Concatenated rather than serialised per document: orjson's result for a small
        object keeps a 4 KiB allocation, which thousands of documents in flight would hold.
        """
        prefix = self._prefixes.get(index)
        if prefix is None:
            if len(self._prefixes) > 64:  # date-named indices: keep the cache small
                self._prefixes.clear()
            prefix = self._prefixes[index] = b'{"%s":{"_index":%s,"_id":' % (
                self.op_type.encode(), orjson.dumps(index))
        return prefix

    def batches(self, chunk: Chunk, skip: Container[int] = ()) -> Iterator[list[Document]]:
        """Batches of the chunk's documents in order, leaving out the positions in ``skip``."""
        batch: list[Document] = []
        size = 0
        for doc in self.documents(chunk, skip):
            if batch and (size + doc.size > self.max_bytes or len(batch) >= self.max_docs):
                yield batch
                batch, size = [], 0
            batch.append(doc)
            size += doc.size
        if batch:
            yield batch

    def documents(self, chunk: Chunk, skip: Container[int] = ()) -> Iterator[Document]:
        """Every document of the chunk, frame by frame, leaving out the positions in ``skip``."""
        position = 0
        for item in chunk.frames():
            yield from self.frame_documents(item, position, float(chunk.timekey), skip)
            position += item.count

    def frame_documents(
        self, item: Frame, first: int, fallback_time: float, skip: Container[int] = ()
    ) -> Iterator[Document]:
        """The documents of one data frame; ``first`` is the position of its first record."""
        meta = item.meta
        offsets: list[int] = meta.get("offs") or []
        found = lines(item.payload)
        if len(found) != item.count or len(offsets) != item.count:
            raise EncodeError(
                f"frame of {item.count} records has {len(found)} lines and {len(offsets)} offsets"
            )
        source, file, path = str(meta.get("src", "")), str(meta.get("file", "")), str(meta.get("path", ""))
        for n, (line, offset) in enumerate(zip(found, offsets, strict=True)):
            if first + n in skip:
                continue
            record = parse_object(line)
            doc_id = document_id(record, self.id_key, self.time_key, file, offset)
            when = event_time(record.get(self.time_key), fallback_time)
            index = self.index_name(when)
            action = self._action_prefix(index) + orjson.dumps(doc_id) + b"}}\n"
            body = with_timestamp(line, record, when) if self.data_stream else line
            yield Document(first + n, index, doc_id, action, body, source, file, path, offset)


def with_timestamp(line: memoryview, record: dict[str, Any], epoch: float) -> memoryview | bytes:
    """The document with the ``@timestamp`` a data stream requires: its event time, unless it has one.

    >>> bytes(with_timestamp(memoryview(b'{"a":1}'), {"a": 1}, 1795000000.5))
    b'{"a":1,"@timestamp":"2026-11-18T11:06:40.500Z"}'
    >>> bytes(with_timestamp(memoryview(b'{"@timestamp":"x"}'), {"@timestamp": "x"}, 0.0))
    b'{"@timestamp":"x"}'
    """
    if "@timestamp" in record:
        return line
    stamp = orjson.dumps(iso_millis(epoch))
    if record and line[-1] == 0x7D:  # "}": spliced before the closing brace: the record's bytes as they are
        return b"".join((line[:-1], b',"@timestamp":', stamp, b"}"))
    return orjson.dumps({**record, "@timestamp": iso_millis(epoch)})  # {} or not an object (refused anyway)
