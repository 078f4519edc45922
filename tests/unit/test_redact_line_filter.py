"""The redact transform's line filter: it flags every line the field-level prefilter would, whatever the writer.

The filter reads the serialised lines instead of the decoded fields (no UTF-8 encoding of every
string); it is only allowed to flag more, never less: a line it lets through is never looked at again.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest

from pipeline import generator
from pipeline.transforms.redact.config import RedactTransformConfig
from pipeline.transforms.redact.detectors import BUILTIN
from pipeline.transforms.redact.engine import ANCHOR_ASCII, LineFilter
from pipeline.transforms.redact.transform import RETRY_LINE_FILTER, RedactTransform
from tests.support.redact_corpus import encode, negatives, positives

EMAIL = "maria.garcia@example.com"
CARD = "4111 1111 1111 1111"


def transform(**config: Any) -> RedactTransform:
    return RedactTransform("pii", RedactTransformConfig(type="redact", **config))


def field_level(t: RedactTransform, lines: list[bytes]) -> set[int]:
    """The lines whose decoded fields the prefilter flags (what the transform did before the line filter)."""
    records = [orjson.loads(line) for line in lines]
    return set(t.prefilter.scan(*t.redactor.texts(records), len(records)))


def flagged(t: RedactTransform, lines: list[bytes]) -> set[int]:
    assert t.line_filter is not None
    return set(t.line_filter.flagged(lines))


@pytest.fixture(scope="module")
def pii() -> RedactTransform:
    return transform()


@pytest.mark.parametrize("style", [0, 1, 2], ids=["orjson", "ascii-escaped", "escaped-slash"])
def test_every_line_the_fields_flag_is_flagged_on_the_corpus(pii: RedactTransform, style: int) -> None:
    samples = [*positives(60), *negatives(600)]
    lines = [encode(sample, style) for sample in samples]
    expected = field_level(pii, lines)
    got = flagged(pii, lines)
    assert expected <= got, [lines[i][:120] for i in sorted(expected - got)[:3]]
    if style == 0:  # nothing escaped: the filter flags what the fields do, no more
        assert got == expected


WRITERS: list[tuple[str, bytes]] = [
    # What JSON writers do besides orjson: spaces around the colon, escapes of ASCII characters in keys
    # and values (\u0040 for "@", \/), values that are not strings, the same key nested elsewhere.
    ("spaces", b'{"input" :  "card 4111 1111 1111 1111", "n": 1}\n'),
    ("tab", b'{"input":\t"mail maria.garcia@example.com"}\n'),
    ("escaped-at", b'{"input": "write to maria\\u0040example.com"}\n'),
    ("escaped-digit", b'{"input": "card \\u0034111 1111 1111 1111"}\n'),
    ("escaped-slash", b'{"output": "Bearer abc\\/defghijklmnop"}\n'),
    ("escaped-key", b'{"\\u0069nput": "card 4111 1111 1111 1111"}\n'),
    ("number", b'{"input": 4111111111111111}\n'),
    ("messages", b'{"messages": [{"role": "user", "content": "call +44 20 7946 0958"}]}\n'),
    ("object", b'{"input": {"card": "4111 1111 1111 1111"}}\n'),
    ("after-escapes", b'{"input": "a \\"quoted\\" \\\\ path\\n\\t then 4111 1111 1111 1111"}\n'),
    ("after-unicode", b'{"input": "caf\\u00e9 \\ud83d\\ude80 4111 1111 1111 1111"}\n'),
    ("second-key", b'{"output": "ok", "input": "iban GB82 WEST 1234 5698 7654 32"}\n'),
    ("key-twice", b'{"input": "ok", "input": "phone +1 415 555 2671"}\n'),
]


@pytest.mark.parametrize("line", [line for _, line in WRITERS], ids=[name for name, _ in WRITERS])
def test_other_writers_lines_are_flagged_and_redacted(pii: RedactTransform, line: bytes) -> None:
    assert field_level(pii, [line]) == {0}
    assert flagged(pii, [line]) == {0}
    out, _ = pii.apply([line], [orjson.loads(line)])
    assert out[0] is not line and orjson.loads(out[0])["redactions"]


def test_digits_outside_the_scanned_fields_do_not_flag_a_line(pii: RedactTransform) -> None:
    # Numbers, ids, times and phone-like values in fields nobody asked to scan; a scanned value
    # that ends in a backslash or holds escaped quotes still ends at its closing quote.
    record = {"timestamp": 1795000000.25, "request_id": "00000001-000000000042", "latency_ms": 850.125,
              "caller": "+44 20 7946 0958", "input": 'say "hi" \\', "output": "ok", "tokens": 1234567,
              "nested": {"input": "plain", "ms": 1733000000000}}
    lines = [orjson.dumps(record) + b"\n", json.dumps(record).encode() + b"\n"]
    assert flagged(pii, lines) == set() == field_level(pii, lines)


def test_typical_records_are_not_flagged(pii: RedactTransform) -> None:
    lines = [orjson.dumps(record) + b"\n" for record in generator.records(300, max_chars=4000)]
    assert flagged(pii, lines) == set()
    assert pii.apply(lines, [orjson.loads(line) for line in lines])[0] is lines


def test_a_token_outside_the_scanned_fields_costs_a_check_not_a_redaction() -> None:
    t = transform()
    line = orjson.dumps({"user": EMAIL, "input": "hello"}) + b"\n"
    assert flagged(t, [line]) == {0} and field_level(t, [line]) == set()
    assert t.apply([line], [orjson.loads(line)])[0] == [line]


def test_after_a_batch_mostly_flagged_the_filter_rests_then_is_tried_again() -> None:
    t = transform()
    leaky = [orjson.dumps({"user": EMAIL, "input": f"hi {n}"}) + b"\n" for n in range(4)]
    t.apply(leaky, [orjson.loads(line) for line in leaky])
    assert t.skip_line_filter == RETRY_LINE_FILTER
    line = orjson.dumps({"input": f"card {CARD}"}) + b"\n"
    for _ in range(RETRY_LINE_FILTER):  # the field-level path alone: same result
        out, _ = t.apply([line], [orjson.loads(line)])
        assert orjson.loads(out[0])["input"] == "card [REDACTED:payment_card]"
    assert t.skip_line_filter == 0
    clean = [orjson.dumps({"input": f"hi {n}"}) + b"\n" for n in range(4)]
    assert t.apply(clean, [orjson.loads(line) for line in clean])[0] is clean
    assert t.skip_line_filter == 0


def test_user_patterns_and_odd_field_names_use_the_field_level_path() -> None:
    assert transform(patterns={"emp": {"regex": "EMP-[0-9]{6}", "anchor": "EMP-[0-9]{6}"}}).line_filter is None
    assert transform(patterns={"emp": {"regex": "EMP-[0-9]{6}", "mode": "off"}}).line_filter is not None
    assert transform(fields=['say "hi"']).line_filter is None
    assert transform(fields=["prompté"]).line_filter is None
    dotted = transform(fields=["gen_ai.prompt", "a b"])
    line = orjson.dumps({"gen_ai.prompt": f"mail {EMAIL}", "genXai.prompt": CARD, "a b": CARD}) + b"\n"
    assert flagged(dotted, [line]) == {0}
    out, _ = dotted.apply([line], [orjson.loads(line)])
    assert orjson.loads(out[0])["redactions"] == {"email": 1, "payment_card": 1}


def anchor_chars(parsed: Any) -> set[str]:
    """Every character a parsed expression may match; fails on what could match anything (a wildcard,
    a negated class, a category such as \\s)."""
    chars: set[str] = set()
    for op, value in parsed:
        name = str(op)
        if name == "LITERAL":
            chars.add(chr(value))
        elif name == "IN":
            for item_op, item in value:
                if str(item_op) == "LITERAL":
                    chars.add(chr(item))
                elif str(item_op) == "RANGE":
                    chars.update(map(chr, range(item[0], item[1] + 1)))
                else:
                    raise AssertionError(f"class item {item_op} {item}")
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            chars |= anchor_chars(value[2])
        elif name == "SUBPATTERN":
            chars |= anchor_chars(value[3])
        elif name == "BRANCH":
            for branch in value[1]:
                chars |= anchor_chars(branch)
        else:
            raise AssertionError(f"{name} {value}")
    return chars


def test_built_in_anchors_match_only_the_characters_the_filter_assumes() -> None:
    # The filter's soundness rests on this: an anchor matches only characters of ANCHOR_ASCII
    # (printable ASCII, no quote or backslash), which JSON writes as they are or as escapes the
    # filter flags; case-insensitive anchors fold letters only.
    for detector in BUILTIN:
        for anchor in detector.anchors:
            chars = anchor_chars(re._parser.parse(anchor.decode()))  # type: ignore[attr-defined]
            assert chars <= set(ANCHOR_ASCII), (detector.name, sorted(chars - set(ANCHOR_ASCII)))
            assert '"' not in ANCHOR_ASCII and "\\" not in ANCHOR_ASCII
    LineFilter(BUILTIN, ["input"])  # compiles
