"""The matching engine: a Hyperscan prefilter over the scanned fields, then Python on the few candidates.

Why two stages (measured by benchmarks/redact.py, figures in the closing note of issue 18):
almost no record holds anything to redact, and the prefilter rules those out at about a
gigabyte per second. Python's ``re`` with the same anchors as one alternation runs at a few MB/s
(an alternation of character-class patterns is tried at every position), google-re2 at a few
hundred. Only the detectors whose anchor matched run, in Python, on the strings of the record
the anchor matched in: the boundaries, Luhn, IBAN and address checks are there.

The prefilter reads the fields' decoded strings (the records parsed upstream), not the raw
line: JSON escapes (``\\u0040`` for ``@``) cannot hide a value from it, and the fields every
record carries (ISO times, epoch seconds, ids, host names) do not make every line a candidate.
Encoding those strings to UTF-8 is most of the transform's cost; measured and rejected (CPU
seconds per 100,000 typical records, freshly parsed, same process, loaded machine): slicing the
fields out of the raw lines (finding each key and closing quote costs more in Python than the
encoding), orjson writing the batch's values in one call (slower on fresh strings: it first
builds each one's cached UTF-8 copy), Hyperscan's vectored mode instead of the join (a slower
scan), ASCII with replacement characters (no faster), the scan in a thread (it holds the GIL).
The anchors are split over two databases: Hyperscan slows down several times over when the
digit and IBAN anchors share one with the token anchors.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, cast

import hyperscan
import orjson

from pipeline.transforms.redact.detectors import Detector

DIGIT_HEAVY = frozenset({"payment_card", "iban", "phone", "ipv4"})  # their anchors share the second database
MAX_DEPTH = 64  # deeper containers are scanned as their JSON text


class Prefilter:
    """Which detectors could match in which records of a batch: one Hyperscan scan per database."""

    def __init__(self, detectors: Sequence[Detector], always: Sequence[int] = ()) -> None:
        by_anchor: dict[bytes, list[int]] = {}
        for index, detector in enumerate(detectors):
            for anchor in detector.anchors:
                by_anchor.setdefault(anchor, []).append(index)
        heavy = {a: ids for a, ids in by_anchor.items() if {detectors[i].name for i in ids} & DIGIT_HEAVY}
        light = {a: ids for a, ids in by_anchor.items() if a not in heavy}
        groups = [group for group in (light, heavy) if group]
        self.databases = [_database(list(group)) for group in groups]  # (database, scratch) pairs
        self.ids = [list(group.values()) for group in groups]
        self.always = frozenset(always)

    def scan(self, pieces: Sequence[bytes], owners: Sequence[int], count: int) -> dict[int, frozenset[int]]:
        """Record index → indexes of the detectors to run on it, for records whose text matched an anchor.

        ``pieces`` are the UTF-8 strings of ``count`` records, ``owners`` the record of each piece.
        They are joined and scanned at once: a call per record would cost more than the scan.
        """
        found: list[tuple[list[int], int]] = []
        block = b"\n".join(pieces)  # no built-in anchor matches a newline: none spans two strings
        for (database, scratch), ids in zip(self.databases, self.ids, strict=True):
            database.scan(block, match_event_handler=_collect, context=(found, ids), scratch=scratch)
        hits: dict[int, set[int]] = {i: set(self.always) for i in range(count)} if self.always else {}
        if found:
            starts = list(accumulate((len(piece) + 1 for piece in pieces), initial=0))
            for detectors, end in found:
                hits.setdefault(owners[bisect_right(starts, end - 1) - 1], set()).update(detectors)
        return {index: frozenset(detectors) for index, detectors in hits.items()}


def _collect(pattern: int, start: int, end: int, flags: int, context: object) -> None:
    found, ids = cast(tuple[list[tuple[list[int], int]], list[list[int]]], context)
    found.append((ids[pattern], end))


# Compiling takes about 10 MB of heap for a moment, which the allocator keeps as the process's
# peak RSS; a short-lived child compiles instead and hands over the serialised database (~70 KB).
_COMPILE = """
import sys, hyperscan
anchors = sys.stdin.buffer.read().split(b"\\0")
database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
try:
    database.compile(expressions=anchors, ids=list(range(len(anchors))), elements=len(anchors),
                     flags=[0] * len(anchors))
except hyperscan.error as exc:
    sys.exit(f"{exc}")
sys.stdout.buffer.write(hyperscan.dumpb(database))
"""


class AnchorError(ValueError):
    """Hyperscan refused an anchor."""


def _database(anchors: list[bytes]) -> tuple[hyperscan.Database, hyperscan.Scratch]:
    """A block-mode database of ``anchors`` (every match reported: the record of each one matters)."""
    child = subprocess.run([sys.executable, "-c", _COMPILE], input=b"\0".join(anchors), capture_output=True,
                           check=False, timeout=120)
    if child.returncode != 0:
        raise AnchorError(child.stderr.decode(errors="replace").strip().splitlines()[-1])
    database = hyperscan.loadb(child.stdout, hyperscan.HS_MODE_BLOCK)
    return database, hyperscan.Scratch(database)


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
        chosen = [d for i, d in enumerate(self.detectors) if i in hits]
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

    def texts(self, records: Sequence[dict[str, Any]]) -> tuple[list[bytes], list[int]]:
        """The strings of the scanned fields of ``records`` (nested ones too, numbers as digits) in UTF-8,
        and the index of the record each belongs to."""
        pieces: list[bytes] = []
        owners: list[int] = []
        strings: list[str] = []
        for index, record in enumerate(records):
            for name in self.fields:
                value = record.get(name)
                if type(value) is str:
                    pieces.append(value.encode("utf-8", "surrogatepass"))
                    owners.append(index)
                elif value is not None:
                    _strings(value, strings, 0)
                    pieces.extend(text.encode("utf-8", "surrogatepass") for text in strings)
                    owners.extend(index for _ in strings)
                    strings.clear()
        return pieces, owners

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


def _strings(value: Any, out: list[str], depth: int) -> None:
    """Append the strings in ``value`` (numbers as their digits; deep containers as their JSON text)."""
    kind = type(value)
    if kind is str:
        out.append(value)
    elif kind is int:
        out.append(str(value))
    elif kind is list or kind is dict:
        if depth >= MAX_DEPTH:
            out.append(orjson.dumps(value).decode())
            return
        for item in value.values() if kind is dict else value:
            _strings(item, out, depth + 1)
