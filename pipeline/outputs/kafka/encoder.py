"""Kafka messages built from chunk frames: value, key, id header; records too large set apart.

Each record goes out as it is in the chunk (one JSON document, without its newline), with
its deterministic id (:mod:`pipeline.outputs.records`, the same as the Elasticsearch
``_id``) in a header, and optionally a field of it as the message key. A record that the
topic could never take (over its ``max.message.bytes``) is returned apart, for the
dead-letter store: it must not fail the transaction of the whole chunk.

Parsing every record again only for its id cost more CPU than anything else here, so a frame
may carry its records' ids (meta ``ids``, computed by the processor with the keys in meta
``idk``: :func:`pipeline.runtime.topology._carried_ids`); without a key field they are used as
they are. A frame without them (parsed by a parse worker, written by an older version, or with
other keys) is parsed as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.buffer.chunk import Chunk
from pipeline.buffer.frame import Frame
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.outputs.records import document_id, lines, parse_object

#: Bytes a record costs in a batch besides its key, value and headers (varints, attributes), and
#: the batch header a record alone in its batch carries: kept generous, the estimate must not be low.
RECORD_OVERHEAD = 64 + 61


class EncodeError(ValueError):
    """A frame cannot be turned into messages (its meta does not match its records)."""


@dataclass(slots=True)
class Message:
    """One record of a chunk, as a Kafka message."""

    value: bytes
    key: bytes | None
    record_id: str
    source: str
    path: str
    file: str
    offset: int

    def size(self, header: str) -> int:
        """Bytes the message takes on the wire (estimated from above)."""
        key = len(self.key) if self.key is not None else 0
        return len(self.value) + key + len(header) + len(self.record_id) + RECORD_OVERHEAD


def key_bytes(value: object) -> bytes | None:
    """A field's value as a message key: strings as UTF-8, numbers as their text, else no key.

    >>> key_bytes("s-1"), key_bytes(7), key_bytes(None), key_bytes(True)
    (b's-1', b'7', None, None)
    """
    if type(value) is str:
        return value.encode()
    if type(value) in (int, float):
        return str(value).encode()
    return None


class MessageEncoder:
    """Turns a chunk into messages, frame by frame."""

    def __init__(self, config: KafkaOutputConfig) -> None:
        self.id_key = config.id_key
        self.time_key = config.time_key
        self.key_field = config.key_field
        self.id_keys = [config.id_key, config.time_key]  # as a frame's meta ``idk`` names them

    def messages(self, chunk: Chunk) -> Iterator[Message]:
        """Every record of the chunk, in order."""
        for item in chunk.frames():
            yield from self.frame_messages(item)

    def frame_messages(self, item: Frame) -> Iterator[Message]:
        """The messages of one data frame."""
        meta = item.meta
        offsets: list[int] = meta.get("offs") or []
        found = lines(item.payload)
        if len(found) != item.count or len(offsets) != item.count:
            raise EncodeError(f"frame of {item.count} records has {len(found)} lines and {len(offsets)} offsets")
        source, file, path = str(meta.get("src", "")), str(meta.get("file", "")), str(meta.get("path", ""))
        id_key, time_key, key_field = self.id_key, self.time_key, self.key_field
        ids = meta.get("ids")
        if key_field is None and ids is not None and meta.get("idk") == self.id_keys:
            if len(ids) != item.count:
                raise EncodeError(f"frame of {item.count} records has {len(ids)} ids")
            for line, offset, record_id in zip(found, offsets, ids, strict=True):
                yield Message(bytes(line), None, str(record_id), source, path, file, offset)
            return
        for line, offset in zip(found, offsets, strict=True):
            record = parse_object(line)
            key = key_bytes(record.get(key_field)) if key_field is not None else None
            yield Message(bytes(line), key, document_id(record, id_key, time_key, file, offset),
                          source, path, file, offset)
