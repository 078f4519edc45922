"""RecordProcessor: the hot loop, from a block of lines to enriched records grouped by time key.

Speed matters here more than anywhere (see benchmarks/): one loop per block, no object
per record. A valid record is not re-serialised: after orjson has validated the line,
the added fields are spliced in place of its closing brace, which keeps the line's
bytes as written. Lines that cannot take the splice (an added key already present,
an empty object, trailing bytes after the brace) are re-serialised with the added
fields winning, as fluentd's record_transformer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.clock import Clock
from pipeline.config import EnrichConfig
from pipeline.deadletter import line_fields
from pipeline.sources.base import LineBatch
from pipeline.transforms.enrich import Enricher, iso_millis
from pipeline.transforms.parse_json import MAX_EPOCH, describe_error, event_time


@dataclass(slots=True)
class TimeGroup:
    """Records of one time window: serialised lines (each ending in newline) and source offsets."""

    lines: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ProcessedBatch:
    """A batch after parsing and enrichment, grouped per time-key width, then per window."""

    batch: LineBatch
    groups: dict[int, dict[int, TimeGroup]]
    dead: list[dict[str, Any]]
    records: int


class RecordProcessor:
    """Parse, validate, enrich and group the lines of a batch."""

    def __init__(self, enrich: EnrichConfig, widths: set[int], clock: Clock) -> None:
        self.enricher = Enricher(enrich)
        self.time_key = enrich.time_key
        self.widths = sorted(widths)
        self.clock = clock

    def process(self, batch: LineBatch) -> ProcessedBatch:
        """Turn one batch into grouped records and dead-letter entries."""
        now = self.clock.time()
        added = self.enricher.fields(batch.tag, now)
        lines, offsets, times, dead = self._parse(batch, now, added)
        if batch.offsets is not None:
            offsets = _source_offsets(batch, offsets, dead)
        groups = {width: _group(lines, offsets, times, width) for width in self.widths}
        return ProcessedBatch(batch, groups, [*batch.dead, *dead], len(lines))

    def _parse(
        self, batch: LineBatch, now: float, added: dict[str, Any]
    ) -> tuple[list[bytes], list[int], list[float], list[dict[str, Any]]]:
        suffix = self.enricher.suffix(added)
        keys, time_key = self.enricher.keys, self.time_key
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        out: list[bytes] = []
        offsets: list[int] = []
        times: list[float] = []
        dead: list[dict[str, Any]] = []
        data = batch.data
        view, find, join = memoryview(data), data.find, b"".join
        base, pos, size = batch.start, 0, len(data)
        while pos < size:
            # Slices of one memoryview: no copy per line until the enriched record is built.
            end = find(b"\n", pos)
            line = view[pos:end]
            try:
                record = loads(line)
            except decode_error as exc:
                bad = bytes(line)
                dead.append(self._dead(batch, base + pos, bad, describe_error(bad, exc), now))
                pos = end + 1
                continue
            if type(record) is not dict:
                dead.append(self._dead(batch, base + pos, bytes(line), "not a JSON object", now))
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
            stamp = record.get(time_key)
            times.append(stamp if type(stamp) is float and 0.0 <= stamp <= MAX_EPOCH else event_time(stamp, now))
            pos = end + 1
        return out, offsets, times, dead

    def _dead(self, batch: LineBatch, offset: int, line: bytes, reason: str, now: float) -> dict[str, Any]:
        return {
            "id": f"{batch.source}:{batch.key}:{offset}", "time": iso_millis(now), "source": batch.source,
            "path": batch.path, "offset": offset, "reason": reason, **line_fields(line),
        }


def _source_offsets(batch: LineBatch, offsets: list[int], dead: list[dict[str, Any]]) -> list[int]:
    """The batch's own per-line offsets in place of byte positions, in ``offsets`` and in ``dead``."""
    assert batch.offsets is not None
    where, pos, find = {}, 0, batch.data.find
    for offset in batch.offsets:
        where[batch.start + pos] = offset
        pos = find(b"\n", pos) + 1
    for entry in dead:
        entry["offset"] = where[entry["offset"]]
        entry["id"] = f"{batch.source}:{batch.key}:{entry['offset']}"
    return [where[o] for o in offsets]


def _group(lines: list[bytes], offsets: list[int], times: list[float], width: int) -> dict[int, TimeGroup]:
    """Split records by time window of ``width`` seconds (one window in the common case)."""
    if not lines:
        return {}
    first = int(times[0]) // width * width
    if all(first <= t < first + width for t in times):
        return {first: TimeGroup(lines, offsets)}
    groups: dict[int, TimeGroup] = {}
    for line, offset, t in zip(lines, offsets, times, strict=True):
        group = groups.get(int(t) // width * width)
        if group is None:
            group = groups[int(t) // width * width] = TimeGroup()
        group.lines.append(line)
        group.offsets.append(offset)
    return groups
