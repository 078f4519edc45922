"""PackedForward entries to records, and on to stored lines: the forward source's per-record work.

One implementation for every place it runs: the forward source's connection handler (``parse_workers
= 0``), the processor on the event loop (a deferred message no worker took), and a parse worker process
(:func:`pipeline.runtime.parse_worker.run_packed_job`), so all three store the same bytes under the same
offsets. Imports msgpack, orjson and zlib only: a parse worker imports it at its first forward job.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.sources.forward.codec import TooLarge, event_epoch, gunzip, unpack_entries
from pipeline.transforms.decoded import SerialisedRecords, serialise_records

NOT_A_MAP = "record is not a map"


def entries_bytes(raw: bytes, compressed: bool, limit: int) -> bytes:
    """The entries stream of a PackedForward message (gunzipped if ``compressed``), at most ``limit`` bytes;
    ``ProtocolError`` (``TooLarge``) if not."""
    if compressed:
        return gunzip(raw, limit)
    if len(raw) > limit:
        raise TooLarge(f"chunk of {len(raw)} bytes exceeds chunk_limit_bytes = {limit}")
    return raw


def records_of(entries: list[tuple[object, object]], time_key: str
               ) -> tuple[list[dict[Any, Any]], list[tuple[int, bytes, str]]]:
    """The map records of ``entries`` with their event time under ``time_key`` (unless they hold one), and
    the entries that are not maps as (index in the message, the entry shown as JSON, reason)."""
    records: list[dict[Any, Any]] = []
    bad: list[tuple[int, bytes, str]] = []
    append = records.append
    for index, (when, record) in enumerate(entries):  # per record: no calls in the common case
        if type(record) is not dict:
            bad.append((index, shown(record), NOT_A_MAP))
            continue
        if time_key not in record:  # the decoded dict is ours: no copy
            if type(when) is float:  # EventTime, decoded by the codec
                record[time_key] = when
            elif (epoch := event_epoch(when)) is not None:
                record[time_key] = epoch
        append(record)
    return records, bad


def packed_lines(raw: bytes, compressed: bool, limit: int, time_key: str, added: dict[str, Any],
                 now: float) -> tuple[SerialisedRecords, list[tuple[int, bytes, str]]]:
    """A PackedForward message's entries decoded, enriched and serialised (offsets: indices among its map
    records, as :class:`~pipeline.transforms.records.RecordProcessor` gives decoded records), and its entries
    that are not maps (offsets: indices among all entries). ``ProtocolError`` if the entries are not valid."""
    records, not_maps = records_of(unpack_entries(entries_bytes(raw, compressed, limit)), time_key)
    # Not copied line by line: a worker joins them into its slot at once (3 % of its time per message).
    return serialise_records(records, added, time_key, now, copy=False), not_maps


def shown(record: object) -> bytes:
    """A record that cannot be stored, as the dead-letter store shows it."""
    try:
        return orjson.dumps(record, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return repr(record).encode("utf-8", "replace")
