"""The matching engine: a Hyperscan prefilter over raw lines, then Python on the few candidates.

Why two stages (measured in benchmarks/redact.py and the closing note of issue 18): almost no
record holds anything to redact, and the prefilter rules those out at about a gigabyte per
second, on the line's bytes as read, without decoding anything. Python's ``re`` with the same
patterns combined runs at a few MB/s (an alternation of character-class patterns is tried at
every position); google-re2 at about 450 MB/s. Only the detectors whose anchor matched run, in
Python, on the decoded strings of the scanned fields, where the boundaries and checksums are.

The anchors are split over two databases: Hyperscan slows down sharply (about 4x here) when the
digit-class patterns (cards, IBANs, phones, addresses) share a database with the rest.
"""

from __future__ import annotations

import hashlib
import hmac
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, cast

import hyperscan
import orjson

from pipeline.transforms.redact.detectors import ESCAPE_ANCHORS, Detector

ALL = -1  # prefilter id of an escape anchor: every detector must look at the line
DIGIT_HEAVY = frozenset({"payment_card", "iban", "phone", "ipv4", "ipv6"})
MAX_DEPTH = 64  # deeper containers are scanned as their JSON text


class Prefilter:
    """Which detectors could match in which lines of a batch, from one scan of the joined raw lines."""

    def __init__(self, detectors: Sequence[Detector], always: Sequence[int] = ()) -> None:
        heavy: list[tuple[int, bytes]] = []
        light: list[tuple[int, bytes]] = [(ALL, anchor) for anchor in ESCAPE_ANCHORS]
        for index, detector in enumerate(detectors):
            target = heavy if detector.name in DIGIT_HEAVY else light
            target.extend((index, anchor) for anchor in detector.anchors)
        groups = [group for group in (light, heavy) if group]
        self.databases = [_database(group) for group in groups]
        self.ids = [[index for index, _ in group] for group in groups]
        self.always = frozenset(always)

    def scan(self, lines: Sequence[bytes]) -> dict[int, frozenset[int]]:
        """Line index → indexes of the detectors to run on it (``ALL``: every one, an escape may hide a match).

        One scan of the joined lines per database: a call per line would cost more than the scan.
        """
        if self.always:
            return {i: self.always for i in range(len(lines))} | self._scan(lines)
        return self._scan(lines)

    def _scan(self, lines: Sequence[bytes]) -> dict[int, frozenset[int]]:
        block = b"".join(lines)
        found: list[tuple[int, int]] = []
        for database, ids in zip(self.databases, self.ids, strict=True):
            database.scan(block, match_event_handler=_collect, context=(found, ids))
        if not found:
            return {}
        starts = list(accumulate((len(line) for line in lines), initial=0))
        per_line: dict[int, set[int]] = {}
        for detector, end in found:
            per_line.setdefault(bisect_right(starts, end - 1) - 1, set()).add(detector)
        return {line: frozenset(hits | self.always) for line, hits in per_line.items()}


def _collect(pattern: int, start: int, end: int, flags: int, context: object) -> None:
    found, ids = cast(tuple[list[tuple[int, int]], list[int]], context)
    found.append((ids[pattern], end))


def _database(anchors: list[tuple[int, bytes]]) -> hyperscan.Database:
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    database.compile(expressions=[a for _, a in anchors], ids=list(range(len(anchors))), elements=len(anchors),
                     flags=[0] * len(anchors))
    return database


class Redactor:
    """Replaces what detectors find in a record's fields; counts per detector, never keeps the text."""

    def __init__(self, detectors: Sequence[Detector], modes: dict[str, str], fields: Sequence[str],
                 key: bytes | None) -> None:
        self.detectors = list(detectors)
        self.modes = modes
        self.fields = list(fields)
        self.key = key

    def redact(self, record: dict[str, Any], hits: frozenset[int]) -> Counter[str]:
        """Redact ``record`` in place, running the detectors in ``hits``; the counts per detector."""
        chosen = self.detectors if -1 in hits else [d for i, d in enumerate(self.detectors) if i in hits]
        counts: Counter[str] = Counter()
        for name in self.fields:
            if name not in record:
                continue
            dropping: list[bool] = []
            value = self._value(record[name], chosen, counts, dropping, 0)
            if dropping:
                del record[name]
            elif value is not None:
                record[name] = value
        return counts

    def redact_text(self, text: str, counts: Counter[str]) -> str:
        """``text`` with every detector's finds masked or hashed (dropping is not possible in a bare text)."""
        result = self._text(text, self.detectors, counts, [])
        return text if result is None else result

    def _value(self, value: Any, chosen: list[Detector], counts: Counter[str], dropping: list[bool],
               depth: int) -> Any:
        """The redacted ``value``, or None when nothing in it changed."""
        kind = type(value)
        if kind is str:
            return self._text(value, chosen, counts, dropping)
        if kind is int:  # a card or phone number written as a JSON number
            return self._text(str(value), chosen, counts, dropping)
        if kind is not list and kind is not dict:
            return None
        if depth >= MAX_DEPTH:
            return self._text(orjson.dumps(value).decode(), chosen, counts, dropping)
        items = value.items() if kind is dict else enumerate(value)
        changed = {k: new for k, v in items if (new := self._value(v, chosen, counts, dropping, depth + 1)) is not None}
        if not changed:
            return None
        copy = dict(value) if kind is dict else list(value)
        for k, new in changed.items():
            copy[k] = new
        return copy

    def _text(self, text: str, chosen: list[Detector], counts: Counter[str], dropping: list[bool]) -> str | None:
        original = text
        for detector in chosen:
            mode = self.modes[detector.name]
            if mode == "off":
                continue
            text = detector.pattern.sub(self._replacer(detector, mode, counts, dropping), text)
        return None if text == original else text

    def _replacer(self, detector: Detector, mode: str, counts: Counter[str],
                  dropping: list[bool]) -> Callable[[Any], str]:
        def replace(match: Any) -> str:
            whole: str = match.group(0)
            span = match.span("value") if "value" in match.re.groupindex and match.group("value") else None
            value = whole if span is None else match.group("value")
            if detector.check is not None and not detector.check(value):
                return whole
            counts[detector.name] += 1
            if mode == "drop":
                dropping.append(True)
            token = self._token(detector.name, mode, value)
            if span is None:
                return token
            start, end = span[0] - match.start(), span[1] - match.start()
            return whole[:start] + token + whole[end:]

        return replace

    def _token(self, name: str, mode: str, value: str) -> str:
        if mode == "hash" and self.key is not None:
            digest = hmac.new(self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
            return f"[HMAC:{name}:{digest[:16]}]"
        return f"[REDACTED:{name}]"
