"""RecordProcessor: the hot loop, from a block of lines to enriched records grouped by time key.

Speed matters here more than anywhere (see benchmarks/): one loop per block, no object
per record. A valid record is not re-serialised: after orjson has validated the line,
the added fields are spliced in place of its closing brace, which keeps the line's
bytes as written. Lines that cannot take the splice (an added key already present,
an empty object, trailing bytes after the brace) are re-serialised with the added
fields winning, as fluentd's record_transformer does.

Transforms (``transforms = [...]`` on a source or an output) run here too, per batch. A source's
chain changes what every output of that source gets. Outputs with their own chain get a variant:
each distinct chain is computed once per batch (a shared prefix once too), each (width, chain)
grouped once, and :attr:`ProcessedBatch.by_output` hands each output its variant; outputs without
a chain share :attr:`ProcessedBatch.groups`. A transform never drops a record, so every variant
keeps the same offsets, and a buffer's frames stay what exactly-once relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.clock import Clock
from pipeline.config import EnrichConfig
from pipeline.deadletter import line_fields
from pipeline.outputs.records import document_id
from pipeline.sources.base import LineBatch
from pipeline.transforms.base import Records
from pipeline.transforms.enrich import Enricher, iso_millis
from pipeline.transforms.lines import ParsedLines, ParsedRecords, parse_lines, serialise_records
from pipeline.transforms.packed import serialise_packed
from pipeline.transforms.plan import Chain, SourceRoute, TransformPlan


@dataclass(slots=True)
class TimeGroup:
    """Records of one time window: serialised lines (each ending in newline) and source offsets.

    ``lines`` may also hold all the records as one payload (a parse worker's): count ``offsets``.
    """

    lines: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    crc: int | None = None  # CRC-32 of the lines joined, when whoever made them computed it
    ids: list[str] | None = None  # each record's id, when an output routed for its source wants them carried


@dataclass(slots=True)
class ProcessedBatch:
    """A batch after parsing and enrichment, grouped per time-key width, then per window."""

    batch: LineBatch
    groups: dict[int, dict[int, TimeGroup]]
    dead: list[dict[str, Any]]
    records: int
    by_output: dict[str, dict[int, TimeGroup]] = field(default_factory=dict)  # outputs with their own chain

    def groups_for(self, output: str, width: int) -> dict[int, TimeGroup]:
        """The records ``output`` takes (its own transforms applied), per window of ``width`` seconds."""
        groups = self.by_output.get(output)
        return self.groups[width] if groups is None else groups


class RecordProcessor:
    """Parse, validate, enrich and group the lines of a batch."""

    def __init__(self, enrich: EnrichConfig, widths: set[int], clock: Clock, plan: TransformPlan | None = None,
                 carried_ids: dict[str, tuple[str, str]] | None = None) -> None:
        self.enricher = Enricher(enrich)
        self.time_key = enrich.time_key
        self.widths = sorted(widths)
        self.clock = clock
        self.plan = plan or TransformPlan()
        # Source → (id_key, time_key) of the outputs that take its records' ids from the frames rather
        # than parse every record again (the kafka output). Not where the enricher adds either key: a
        # spliced record's dict lacks the added fields, so its id could differ from the stored line's.
        self.carried_ids = {src: keys for src, keys in (carried_ids or {}).items()
                            if self.enricher.keys.isdisjoint(keys)}

    def process(self, batch: LineBatch) -> ProcessedBatch:
        """Turn one batch into grouped records and dead-letter entries."""
        now = self.clock.time()
        added = self.enricher.fields(batch.tag, now)
        route = self.plan.routes.get(batch.source)
        # Ids are carried only for records stored as parsed here: transforms would change them per output.
        decoded = batch.records is not None or batch.packed  # maps, not lines
        id_keys = self.carried_ids.get(batch.source) if route is None and not decoded else None
        # Kept as parsed for the ids and for the transforms of decoded records; parsed lines give the
        # transforms their records again on demand (ParsedRecords) rather than all of them kept.
        kept: list[dict[str, Any]] | None = [] if id_keys is not None or (
            route is not None and decoded) else None
        records: Records | None = kept
        ids: list[str] | None = None
        if decoded:
            lines, offsets, times, dead = self._serialise(batch, now, added, kept)
        else:
            parsed = self._parse(batch, now, added, kept)
            lines, offsets, times = parsed.lines, parsed.offsets, parsed.times
            dead = [self.dead_entry(batch, offset, line, reason, now) for offset, line, reason in parsed.bad]
            if route is not None:
                records = ParsedRecords(batch.data, parsed, added, self.enricher.keys)
            if batch.offsets is not None:
                offsets = _source_offsets(batch, offsets, dead)
            if id_keys is not None and kept is not None:
                # The same ids the outputs compute from the stored lines (pipeline/outputs/records.py), from
                # the records this parse holds anyway: an output taking them parses nothing again.
                id_key, time_key, file = id_keys[0], id_keys[1], batch.key
                ids = [document_id(r, id_key, time_key, file, o) for r, o in zip(kept, offsets, strict=True)]
        dead = [*batch.dead, *dead]
        by_output: dict[str, dict[int, TimeGroup]] = {}
        widths = self.widths
        if route is not None and records is not None:
            variants = self.plan.variants(route, lines, records)
            lines = variants.lines
            dead = self.masked(route, dead)
            by_output = _grouped(variants.outputs, offsets, times)
            widths = self.plain_widths(route)
        groups = {width: group_by_window(lines, offsets, times, width, ids) for width in widths}
        return ProcessedBatch(batch, groups, dead, len(offsets), by_output)

    def plain_widths(self, route: SourceRoute | None) -> list[int]:
        """The widths the batch's own groups are made for: none when every output routed has its own chain."""
        return self.widths if route is None or route.plain else []

    def masked(self, route: SourceRoute, dead: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Dead-letter entries of a routed source, masked as :meth:`SourceRoute.dead_letter_chain` says."""
        masking = route.dead_letter_chain()
        return [self.plan.dead_letter(masking, entry) for entry in dead]

    def _parse(self, batch: LineBatch, now: float, added: dict[str, Any],
               records: list[dict[str, Any]] | None) -> ParsedLines:
        suffix = self.enricher.suffix(added)
        return parse_lines(batch.data, batch.start, suffix, added, self.enricher.keys, self.time_key, now, records)

    def _serialise(
        self, batch: LineBatch, now: float, added: dict[str, Any], kept: list[dict[str, Any]] | None
    ) -> tuple[list[bytes], list[int], list[float], list[dict[str, Any]]]:
        """Records a source decoded itself (dicts), or packed entries decoded here: enrich and serialise once;
        offsets are their indices among the maps (a bad entry's dead letter: its index among the entries).

        ``kept`` (when transforms need them) receives the records serialised, as ``_parse`` gives its own.
        """
        if batch.packed:
            done = serialise_packed(batch.data, added, self.time_key, now, kept)
            batch.end = batch.start + len(done.offsets) + len(done.bad)  # the entries found: the source counts them
        else:
            records, batch.records = batch.records or [], None
            done = serialise_records(records, added, self.time_key, now, kept)
        dead = [self.dead_entry(batch, index, shown, reason, now) for index, shown, reason in done.bad]
        return done.lines, done.offsets, done.times, dead

    def dead_entry(self, batch: LineBatch, offset: int, line: bytes, reason: str, now: float) -> dict[str, Any]:
        """The dead-letter entry of a bad line of ``batch`` at ``offset``."""
        return {
            "id": f"{batch.source}:{batch.key}:{offset}", "time": iso_millis(now), "source": batch.source,
            "path": batch.path, "offset": offset, "reason": reason, **line_fields(line), **(batch.dead_fields or {}),
        }


def line_offsets(batch: LineBatch) -> dict[int, int]:
    """Where each line of a batch with its own ``offsets`` starts (``batch.start`` + its byte position, as the
    parse gives it) → that line's offset in its source (e.g. a Kafka message's offset)."""
    assert batch.offsets is not None
    where, pos, find = {}, 0, batch.data.find
    for offset in batch.offsets:
        where[batch.start + pos] = offset
        pos = find(b"\n", pos) + 1
    return where


def _source_offsets(batch: LineBatch, offsets: list[int], dead: list[dict[str, Any]]) -> list[int]:
    """The batch's own per-line offsets in place of byte positions, in ``offsets`` and in ``dead``."""
    where = line_offsets(batch)
    for entry in dead:
        entry["offset"] = where[entry["offset"]]
        entry["id"] = f"{batch.source}:{batch.key}:{entry['offset']}"
    return [where[o] for o in offsets]


def _grouped(variants: dict[str, tuple[int, Chain, list[bytes]]], offsets: list[int],
             times: list[float]) -> dict[str, dict[int, TimeGroup]]:
    """Each output's variant by window: each (width, chain) grouped once, shared by the outputs that take it."""
    grouped: dict[tuple[int, Chain], dict[int, TimeGroup]] = {}
    by_output = {}
    for output, (width, chain, lines) in variants.items():
        if (width, chain) not in grouped:
            grouped[(width, chain)] = group_by_window(lines, offsets, times, width)
        by_output[output] = grouped[(width, chain)]
    return by_output


def group_by_window(lines: list[bytes], offsets: list[int], times: list[float], width: int,
                    ids: list[str] | None = None) -> dict[int, TimeGroup]:
    """Split records (and their ``ids``, if given) by time window of ``width`` seconds (one window in the common
    case)."""
    if not lines:
        return {}
    first = int(times[0]) // width * width
    if all(first <= t < first + width for t in times):
        return {first: TimeGroup(lines, offsets, None, ids)}
    groups: dict[int, TimeGroup] = {}
    for index, (line, offset, t) in enumerate(zip(lines, offsets, times, strict=True)):
        group = groups.get(int(t) // width * width)
        if group is None:
            group = groups[int(t) // width * width] = TimeGroup(ids=None if ids is None else [])
        group.lines.append(line)
        group.offsets.append(offset)
        if ids is not None and group.ids is not None:
            group.ids.append(ids[index])
    return groups
