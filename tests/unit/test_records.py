"""RecordProcessor: bytes kept as written, added fields, dead letters with their offsets, time grouping."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.clock import FakeClock
from pipeline.config import EnrichConfig, settings_from_dict
from pipeline.outputs.records import document_id
from pipeline.runtime import topology
from pipeline.sources.base import LineBatch
from pipeline.transforms.base import Records, Replaced
from pipeline.transforms.enrich import iso_millis
from pipeline.transforms.lines import ParsedRecords, parse_lines
from pipeline.transforms.plan import SourceRoute, TransformPlan
from pipeline.transforms.records import ProcessedBatch, RecordProcessor

WALL = 1_795_000_000.0
HOUR = 3600
NOW_KEY = int(WALL) // HOUR * HOUR
ADDED = {"hostname": "host-1", "ingested_at": iso_millis(WALL), "tag": "ai.chat"}


def processor(clock: FakeClock | None = None, widths: set[int] | None = None) -> RecordProcessor:
    enrich = EnrichConfig(hostname="host-1", tag_key="tag")
    return RecordProcessor(enrich, widths or {HOUR}, clock or FakeClock(WALL))


def batch(data: bytes, start: int = 1000) -> LineBatch:
    return LineBatch("agent", "ai.chat", "7:42", "/logs/agent.jsonl", start, start + len(data), data, None)


def records(result: ProcessedBatch, width: int = HOUR) -> list[tuple[int, bytes, int]]:
    """(timekey, line, source offset) of every record, in window then source order."""
    return [
        (key, line, offset)
        for key, group in sorted(result.groups[width].items())
        for line, offset in zip(group.lines, group.offsets, strict=True)
    ]


def test_valid_lines_are_spliced_keeping_their_bytes() -> None:
    line = b'{"prompt": "hi",  "tokens" : 12, "nested": {"x": [1, 2.50]}}'
    result = processor().process(batch(line + b"\n"))

    ((key, out, offset),) = records(result)
    assert out.startswith(line[:-1]) and out.endswith(b"}\n"), "the line's own bytes are not re-serialised"
    assert out == line[:-1] + b"," + orjson.dumps(ADDED)[1:] + b"\n"
    assert orjson.loads(out) == {**orjson.loads(line), **ADDED}
    assert (key, offset, result.records, result.dead) == (NOW_KEY, 1000, 1, [])


def test_reserialised_records_hold_only_their_own_bytes() -> None:
    # orjson's result keeps a 4 KiB allocation whatever its length: a backlog of small records
    # that all need re-serialising (the agent writes its own "hostname") tripled peak RSS.
    lines = b"".join(b'{"hostname":"h","n":%d}\n' % n for n in range(2000))
    tracemalloc.start()
    try:
        result = processor().process(batch(lines))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.records == 2000
    assert held < 2000 * 400, f"{held / 2000:.0f} bytes held per 90-byte record"


def test_added_key_already_present_is_reserialised_with_the_added_value_winning() -> None:
    line = b'{"hostname":"spoofed","tag":"mine","msg":"x"}'
    result = processor().process(batch(line + b"\n"))

    ((_, out, _),) = records(result)
    parsed = orjson.loads(out)
    assert parsed == {"hostname": "host-1", "tag": "ai.chat", "msg": "x", "ingested_at": ADDED["ingested_at"]}
    assert out.count(b'"hostname"') == 1 and out.endswith(b"\n")


def test_empty_object_gets_the_added_fields() -> None:
    result = processor().process(batch(b"{}\n"))
    ((_, out, _),) = records(result)
    assert orjson.loads(out) == ADDED


def test_trailing_whitespace_after_the_brace_still_gives_valid_json() -> None:
    result = processor().process(batch(b'{"a":1}  \r\n'))
    ((_, out, _),) = records(result)
    assert orjson.loads(out) == {"a": 1, **ADDED}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"a": 1', "invalid JSON"),
        (b'{"text": "caf\xe9"}', "invalid UTF-8"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"just a string"', "not a JSON object"),
        (b'{"score": NaN}', "invalid JSON"),
        (b"", "empty line"),
        (b"   \t", "empty line"),
    ],
)
def test_bad_line_becomes_one_dead_entry_and_neighbours_are_kept(bad: bytes, reason: str) -> None:
    good1, good2 = b'{"n":1}', b'{"n":2}'
    data = good1 + b"\n" + bad + b"\n" + good2 + b"\n"

    result = processor().process(batch(data, start=500))

    (entry,) = result.dead
    assert entry["reason"].startswith(reason)
    assert entry["source"] == "agent" and entry["path"] == "/logs/agent.jsonl"
    assert entry["offset"] == 500 + len(good1) + 1
    assert entry["id"] == f"agent:7:42:{entry['offset']}"
    assert entry["length"] == len(bad)
    if reason == "invalid UTF-8":
        assert "line_base64" in entry
    else:
        assert entry["line"] == bad.decode()
    got = records(result)
    assert [orjson.loads(line)["n"] for _, line, _ in got] == [1, 2]
    assert [offset for _, _, offset in got] == [500, 500 + len(good1) + 1 + len(bad) + 1]
    assert result.records == 2


def test_dead_entries_from_the_source_are_kept() -> None:
    item = batch(b'{"a":1}\n')
    item.dead.append({"reason": "line longer than max_line_bytes (99 bytes)", "offset": 3})
    result = processor().process(item)
    assert result.dead == [{"reason": "line longer than max_line_bytes (99 bytes)", "offset": 3}]


def test_batch_with_no_lines() -> None:
    result = processor().process(batch(b""))
    assert result.records == 0 and result.groups == {HOUR: {}} and result.dead == []


@pytest.mark.parametrize(
    ("value", "expected_key"),
    [
        (1_700_000_123.75, 1_700_000_123 // HOUR * HOUR),
        (1_700_000_123, 1_700_000_123 // HOUR * HOUR),
        ("2023-11-14T22:15:23Z", 1_700_000_123 // HOUR * HOUR),
        ("2023-11-14T23:15:23+01:00", 1_700_000_123 // HOUR * HOUR),
        ("2023-11-14T22:15:23.5", 1_700_000_123 // HOUR * HOUR),  # naive means UTC
        (None, NOW_KEY),
        ("not a time", NOW_KEY),
        (True, NOW_KEY),
        ({"nested": 1}, NOW_KEY),
        (-5, NOW_KEY),
        (1e300, NOW_KEY),
    ],
)
def test_event_time_decides_the_window(value: Any, expected_key: int) -> None:
    line = orjson.dumps({"timestamp": value, "msg": "x"})
    result = processor().process(batch(line + b"\n"))
    assert list(result.groups[HOUR]) == [expected_key]


def test_absent_time_key_uses_the_clock() -> None:
    clock = FakeClock(WALL)
    clock.advance(2 * HOUR)
    result = processor(clock).process(batch(b'{"msg":"no time"}\n'))
    assert list(result.groups[HOUR]) == [NOW_KEY + 2 * HOUR]


@pytest.mark.parametrize("value", ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "9999-12-31T23:00:00-14:00"])
def test_iso_time_outside_the_usable_range_falls_back_like_a_number(value: str) -> None:
    """Go's zero time ("0001-01-01T00:00:00Z") is common in agent logs; -1 or > MAX_EPOCH as numbers fall back."""
    line = orjson.dumps({"timestamp": value})
    result = processor().process(batch(line + b"\n"))
    assert list(result.groups[HOUR]) == [NOW_KEY]


def test_records_spanning_two_hours_split_into_two_groups() -> None:
    t0 = NOW_KEY + HOUR - 2  # two seconds before the next window
    lines = [orjson.dumps({"timestamp": t0 + i, "i": i}) for i in range(4)]
    data = b"".join(line + b"\n" for line in lines)

    result = processor().process(batch(data, start=0))

    groups = result.groups[HOUR]
    assert sorted(groups) == [NOW_KEY, NOW_KEY + HOUR]
    assert [orjson.loads(x)["i"] for x in groups[NOW_KEY].lines] == [0, 1]
    assert [orjson.loads(x)["i"] for x in groups[NOW_KEY + HOUR].lines] == [2, 3]
    starts = [sum(len(x) + 1 for x in lines[:i]) for i in range(4)]
    assert groups[NOW_KEY].offsets == starts[:2] and groups[NOW_KEY + HOUR].offsets == starts[2:]


def test_every_width_gets_its_own_grouping() -> None:
    t = NOW_KEY + 120
    result = processor(widths={60, HOUR}).process(batch(orjson.dumps({"timestamp": t}) + b"\n"))
    assert list(result.groups[60]) == [t] and list(result.groups[HOUR]) == [NOW_KEY]


# -- properties ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(
    st.sampled_from(["timestamp", "hostname", "tag", "msg", "a", ""]) | st.text(max_size=10),
    json_values,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_objects, max_size=5))
def test_any_json_object_becomes_a_record_with_the_added_fields(objects: list[dict[str, Any]]) -> None:
    lines = [orjson.dumps(obj) for obj in objects]
    result = processor().process(batch(b"".join(line + b"\n" for line in lines), start=0))

    assert result.dead == [] and result.records == len(objects)
    got = sorted(records(result), key=lambda item: item[2])
    starts = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
    assert [offset for _, _, offset in got] == starts
    for (_, out, _), obj in zip(got, objects, strict=True):
        assert out.endswith(b"\n") and out.count(b"\n") == 1
        assert orjson.loads(out) == {**obj, **ADDED}


any_line = st.one_of(
    st.binary(max_size=40),
    json_objects.map(orjson.dumps),
    st.tuples(json_objects.map(orjson.dumps), st.integers(0, 30)).map(lambda t: t[0][: t[1]]),  # cut short
    st.tuples(json_objects.map(orjson.dumps), st.binary(max_size=4)).map(lambda t: t[0] + t[1]),  # trailing bytes
).map(lambda line: line.replace(b"\n", b""))


@settings(max_examples=300, deadline=None)
@given(st.lists(any_line, max_size=8))
def test_any_bytes_become_a_record_or_a_dead_entry(lines: list[bytes]) -> None:
    data = b"".join(line + b"\n" for line in lines)

    result = processor().process(batch(data, start=0))

    got = records(result)
    assert result.records == len(got)
    assert len(got) + len(result.dead) == len(lines)
    starts = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
    seen = sorted([offset for _, _, offset in got] + [entry["offset"] for entry in result.dead])
    assert seen == starts, "every line is accounted for exactly once, at its own offset"
    for _, out, _ in got:
        assert orjson.loads(out).items() >= ADDED.items()


class Upper:
    """A transform that upper-cases every line and counts its calls (a fake: the plan is what is tested)."""

    def __init__(self, name: str) -> None:
        self.name, self.calls = name, 0

    def apply(self, lines: list[bytes], records: Records) -> tuple[list[bytes], Records]:
        self.calls += 1
        return [line.upper() for line in lines], records

    def dead_letter(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {**entry, "line": entry["line"].upper()}

    def stats(self) -> dict[str, Any]:
        return {"type": "upper", "calls": self.calls}

    def take_tally(self) -> int:
        return 0

    def add_tally(self, tally: int) -> None:
        pass


def planned(route: SourceRoute, widths: set[int] | None = None) -> tuple[RecordProcessor, dict[str, Upper]]:
    transforms = {"a": Upper("a"), "b": Upper("b")}
    plan = TransformPlan(dict(transforms), {"agent": route})
    enrich = EnrichConfig(hostname="host-1", tag_key="tag")
    return RecordProcessor(enrich, widths or {HOUR}, FakeClock(WALL), plan), transforms


def test_each_chain_is_computed_once_per_batch_and_outputs_share_a_variant() -> None:
    route = SourceRoute((), {"search": (HOUR, ("a",)), "copy": (HOUR, ("a",)), "both": (60, ("a", "b"))})
    proc, transforms = planned(route, {HOUR, 60})
    result = proc.process(batch(b'{"x": "hi"}\n{"x": "yo"}\n'))
    assert transforms["a"].calls == 1 and transforms["b"].calls == 1, "the shared prefix ('a',) ran once"
    assert result.by_output["search"] is result.by_output["copy"]
    (group,) = result.groups_for("search", HOUR).values()
    assert [orjson.loads(line)["X"] for line in group.lines] == ["HI", "YO"]
    raw = result.groups_for("archive", HOUR)  # an output without transforms gets the batch as parsed
    assert raw is result.groups[HOUR] and orjson.loads(next(iter(raw.values())).lines[0])["x"] == "hi"
    assert next(iter(raw.values())).offsets == group.offsets == [1000, 1012]
    assert list(result.groups_for("both", 60)) == [int(WALL) // 60 * 60]


def test_a_source_chain_changes_every_output_and_its_dead_letters() -> None:
    proc, transforms = planned(SourceRoute(("a",), {}))
    result = proc.process(batch(b'{"x": "hi"}\nnot json\n'))
    (group,) = result.groups[HOUR].values()
    assert orjson.loads(group.lines[0])["X"] == "HI"
    assert result.dead[0]["line"] == "NOT JSON" and result.records == 1


def test_an_output_chain_masks_the_sources_dead_letters_too() -> None:
    proc, transforms = planned(SourceRoute((), {"search": (HOUR, ("a",)), "archive": (HOUR, ())}))
    result = proc.process(batch(b'{"x": "hi"}\nnot json\n'))
    assert result.dead[0]["line"] == "NOT JSON", "stored once, masked as the output that transforms would"
    assert transforms["a"].calls == 1


def test_sources_without_transforms_keep_no_parsed_records() -> None:
    proc, transforms = planned(SourceRoute((), {"search": (HOUR, ("a",))}))
    other = LineBatch("other", "ai.chat", "7:42", "/logs/o.jsonl", 0, 12, b'{"x": "hi"}\n', None)
    result = proc.process(other)
    assert result.by_output == {} and transforms["a"].calls == 0


def test_a_batch_with_its_own_offsets_gives_them_to_records_and_dead_letters() -> None:
    # A Kafka batch: one line per message, each with its message offset (7 was dead-lettered by the source).
    data = b'{"n":1}\n{"n":2}\nnot json\n{"n":3}\n'
    kafka = LineBatch("bus", "ai.chat", "agents:2", "kafka://agents/2", 5, 10, data, None, offsets=[5, 6, 8, 9])
    result = processor().process(kafka)

    assert [offset for _, _, offset in records(result)] == [5, 6, 9]
    [dead] = result.dead
    assert (dead["offset"], dead["id"], dead["path"]) == (8, "bus:agents:2:8", "kafka://agents/2")


def test_carried_ids_are_the_ids_an_output_computes_from_the_stored_lines() -> None:
    t0 = NOW_KEY + HOUR - 2  # the batch spans two windows: each group carries its own records' ids
    lines = [
        b'{"request_id":"r1","timestamp":%d}' % t0,  # spliced, its own id
        b'{"timestamp":%d,"x":1.5}' % t0,  # spliced, a hashed id
        b'{"hostname":"mine","timestamp":%d}' % (t0 + 2),  # re-serialised (an added key), a hashed id
        b"not json",  # dead: no id, no record
        b'{"request_id":"","timestamp":"%d"}' % (t0 + 3),  # unusable id field: hashed with the raw time value
    ]
    data = b"".join(line + b"\n" for line in lines)
    enrich = EnrichConfig(hostname="host-1", tag_key="tag")
    carried = RecordProcessor(enrich, {HOUR}, FakeClock(WALL), carried_ids={"agent": ("request_id", "timestamp")})
    for item in (batch(data), LineBatch("agent", "ai.chat", "t:3", "kafka://t/3", 40, 45, data, None,
                                        offsets=[40, 41, 42, 43, 44])):
        result = carried.process(item)
        groups = result.groups[HOUR]
        assert sorted(groups) == [NOW_KEY, NOW_KEY + HOUR] and result.records == 4
        for group in groups.values():
            expected = [document_id(orjson.loads(line), "request_id", "timestamp", item.key, offset)
                        for line, offset in zip(group.lines, group.offsets, strict=True)]
            assert group.ids == expected
        first = groups[NOW_KEY].ids
        assert first is not None and first[0] == "r1"


def test_ids_are_carried_only_for_the_sources_that_need_them_and_never_past_transforms_or_added_keys() -> None:
    data = b'{"request_id":"r1","timestamp":1}\n'
    enrich = EnrichConfig(hostname="host-1", tag_key="tag")
    plain = processor().process(batch(data))
    assert all(g.ids is None for g in plain.groups[HOUR].values())
    # An id or time key the enricher adds: a spliced record's dict lacks it, so nothing is carried.
    added_key = RecordProcessor(enrich, {HOUR}, FakeClock(WALL), carried_ids={"agent": ("hostname", "timestamp")})
    assert added_key.carried_ids == {}
    # A source with transforms: each output's variant may change the records, so no ids either.
    plan = TransformPlan(routes={"agent": SourceRoute(chain=())})
    routed = RecordProcessor(enrich, {HOUR}, FakeClock(WALL), plan, {"agent": ("request_id", "timestamp")})
    assert all(g.ids is None for g in routed.process(batch(data)).groups[HOUR].values())


@pytest.mark.parametrize("raw_output", [True, False])
def test_the_batch_is_grouped_as_parsed_only_when_some_output_takes_it_so(tmp_path: Path, raw_output: bool) -> None:
    file_output: dict[str, Any] = {"type": "file", "path": str(tmp_path / "out" / "%Y%m%d.jsonl")}
    outputs = {"search": {**file_output, "transforms": ["pii"]}}
    if raw_output:
        outputs["archive"] = file_output
    config = settings_from_dict({
        "state_dir": str(tmp_path / "state"), "outputs": outputs, "transforms": {"pii": {"type": "redact"}},
        "sources": {"agent": {"type": "tail", "paths": [str(tmp_path / "*.log")], "tag": "ai"}},
    })
    topo = topology.build(config, FakeClock(WALL))
    try:
        result = topo.processor.process(batch(b'{"input": "mail a@example.com"}\n'))
    finally:
        topo.release()
    assert topo.processor.plan.routes["agent"].plain is raw_output
    assert bool(result.groups) is raw_output, "no output takes the records as parsed: none are grouped"
    (search,) = result.groups_for("search", HOUR).values()
    assert b"[REDACTED:email]" in search.lines[0]


def test_records_parsed_on_demand_are_the_records_the_parse_kept() -> None:
    # Spliced, re-serialised (an added key; trailing spaces; an empty object), a bad line, a nested one.
    data = (b'{"x": "hi"}\n{"hostname": "theirs", "x": 2}\n{"x": 3} \nnot json\n{}\n'
            b'{"messages": [{"content": "\\u00e9"}]}\n')
    added = {"hostname": "host-1", "tag": "ai.chat"}
    kept: list[dict[str, Any]] = []
    parsed = parse_lines(data, 1000, b',"hostname":"host-1","tag":"ai.chat"}\n', added, frozenset(added),
                         "timestamp", WALL, kept)
    records = ParsedRecords(data, parsed, added, frozenset(added))
    assert len(records) == len(kept) == 5
    assert list(records) == kept and records[-1] == kept[-1] and records[1:3] == kept[1:3]
    assert records[0] == {"x": "hi"} and records[1]["hostname"] == "host-1", "the added fields as the parse had them"
    assert records[0] is records[0], "parsed once when read again"
    # In a larger buffer (a worker's slot), read in place between begin and stop.
    slot = b"x" * 7 + data + b'{"y": 1}\n'
    kept_inside: list[dict[str, Any]] = []
    inside = parse_lines(slot, 1000, b"}\n", added, frozenset(added), "timestamp", WALL, kept_inside,
                         begin=7, stop=7 + len(data))
    assert list(ParsedRecords(slot, inside, added, frozenset(added))) == kept_inside == kept
    replaced = Replaced(records, {1: {"x": "changed"}})
    assert list(replaced) == [kept[0], {"x": "changed"}, *kept[2:]] and replaced[-4] == {"x": "changed"}
    assert replaced[:2] == [kept[0], {"x": "changed"}]
