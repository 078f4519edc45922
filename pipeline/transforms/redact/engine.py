"""The matching engine: a Hyperscan prefilter over the scanned fields, then Python on the few candidates.

Why two stages (measured by benchmarks/redact.py, figures in the closing note of issue 18):
almost no record holds anything to redact, and the prefilter rules those out at about a
gigabyte per second. Python's ``re`` with the same anchors as one alternation runs at a few MB/s
(an alternation of character-class patterns is tried at every position), google-re2 at a few
hundred. Only the detectors whose anchor matched run, in Python, on the strings of the record
the anchor matched in: the boundaries, Luhn, IBAN and address checks are there.

Finding the candidates takes two stages. :class:`LineFilter` scans the batch's serialised lines
(the bytes the transform is given anyway): the token anchors over whole lines, the digit-run and
IBAN anchors only inside the string values of the scanned keys (ISO times, epoch seconds and ids
in every record would otherwise flag them all). Only the lines it flags go on to
:class:`Prefilter`, over their fields' decoded strings encoded to UTF-8, which decides: JSON
escapes (``\\u0040`` for ``@``) cannot hide a value from it, and a hit outside the scanned fields
is dropped there. The common record (nothing to redact) is thus never encoded, which was most of
the transform's cost: ``benchmarks/redact.py --shared-workload --records 10000`` gives 0.38-0.46
CPU-s per 100,000 records for the transform, 0.50-0.66 with the field-level stage alone (of which
0.39-0.52 was the encoding); ``benchmarks/catchup.py --shared-workload --runs 2 --fsync true
--redact on``, ten runs alternating with it, gives the daemon 0.16 CPU-s less (median difference).

Measured and rejected for the field-level stage before it (CPU seconds per 100,000 typical
records, freshly parsed, same process, loaded machine): slicing the fields out of the raw lines
in Python (finding each key and closing quote costs more than the encoding), orjson writing the
batch's values in one call (slower on fresh strings: it first builds each one's cached UTF-8
copy), Hyperscan's vectored mode instead of the join (a slower scan), ASCII with replacement
characters (no faster), the scan in a thread (it holds the GIL). For the line filter, scanning
the shared workload's lines in-process: every anchor behind the key prefix (7.3 vs 0.3 CPU-s: the
token anchors lose their literal search), the digit anchors without it (0.8 vs 0.2: every number
of every line is reported back to Python), the string body without escapes (faster, but blind
after an escaped quote). The anchors are
split over two databases in each stage: Hyperscan slows down several times over when the digit
and IBAN anchors share one with the token anchors.
"""

from __future__ import annotations

import hashlib
import hmac
import string
import struct
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
        self.databases = _databases([list(group) for group in groups])  # (database, scratch) pairs
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


class LineFilter:
    """Which lines of a batch may hold a built-in anchor in a scanned field, read off the serialised lines.

    The first stage for the built-in detectors: it spares the common record (nothing to redact)
    the UTF-8 encoding of its fields, which is most of what the field-level :class:`Prefilter`
    costs. A line it flags goes on to the Prefilter over its decoded fields, which decides; one
    it does not flag could not have matched there, so the result is the same with or without it:

    * every built-in anchor matches printable ASCII only, never a quote or a backslash: what an
      anchor matches in a decoded string is written byte for byte in the line, unless a writer
      escaped one of its characters (``\\/``, or ``\\u0040`` for ``@``). Lines holding such an
      escape of any character an anchor or a field name may contain are flagged whole;
    * the token anchors (literals: Hyperscan finds them at several GB/s) run over the whole line:
      a hit outside the scanned fields only costs the field-level check of that line;
    * the digit-run and IBAN anchors run only inside the string value of a scanned key (the key,
      then the string's characters and escapes up to the anchor): numbers, times and ids in every
      line would otherwise flag them all. A scanned key whose value is not a string (a message
      list, a number) flags its line.

    ``fields`` must be printable ASCII without a quote or a backslash (see :func:`plain_field`).
    """

    def __init__(self, detectors: Sequence[Detector], fields: Sequence[str]) -> None:
        names = [_literal(name) for name in fields]
        key = rb'"(?:' + b"|".join(names) + rb')"' + JSON_SPACE + b":" + JSON_SPACE
        inside = key + rb'"(?:[^"\\\n]|\\[^\n])*'  # up to the anchor, never past the string's closing quote
        light = list(dict.fromkeys(a for d in detectors if d.name not in DIGIT_HEAVY for a in d.anchors))
        heavy = list(dict.fromkeys(a for d in detectors if d.name in DIGIT_HEAVY for a in d.anchors))
        escaped = "".join(sorted(set(ANCHOR_ASCII).union(*fields)))
        markers = [rb"\\/", rb"\\u00(?:" + b"|".join(_hex_code(c) for c in escaped) + b")",
                   key + rb'[^ \t\r"]']
        # The same split as the Prefilter's: the token literals and the class-only digit anchors
        # scan several times slower in one database than in two.
        groups = [group for group in (light, [inside + b"(?:" + a + b")" for a in heavy] + markers) if group]
        self.databases = _databases(groups)

    def flagged(self, lines: Sequence[bytes]) -> list[int]:
        """Indexes (ascending) of the ``lines`` (each ending in a newline) to check field by field."""
        ends: list[int] = []
        block = b"".join(lines)  # one scan for the batch: a call per line would cost more than the scan
        for database, scratch in self.databases:
            database.scan(block, match_event_handler=_end, context=ends, scratch=scratch)
        if not ends:
            return []
        bounds = list(accumulate(map(len, lines)))  # where each line ends; no pattern matches a newline
        return sorted({bisect_right(bounds, end - 1) for end in ends})


# What a built-in anchor may match, besides letters and digits (tests/unit/test_redact.py checks).
ANCHOR_ASCII = string.ascii_letters + string.digits + " .()+-_%@/~=:"
JSON_SPACE = rb"[ \t\r]*"  # and newline, which a line holds only at its end


def plain_field(name: str) -> bool:
    """Whether the line filter can find the key ``name`` in a serialised line: printable ASCII, no quote or
    backslash (JSON writes those as they are, or as escapes the filter flags)."""
    return all(" " <= c <= "~" and c not in '"\\' for c in name)


def _literal(text: str) -> bytes:
    """``text`` as a Hyperscan expression matching it literally."""
    return "".join(c if c.isalnum() else "\\" + c for c in text).encode()


def _hex_code(char: str) -> bytes:
    """The two last hex digits of ``\\u00XX`` for ``char``, in either case."""
    return b"".join(d.encode() if d.isdigit() else f"[{d}{d.upper()}]".encode() for d in f"{ord(char):02x}")


def _end(pattern: int, start: int, end: int, flags: int, context: object) -> None:
    cast(list[int], context).append(end)


def _collect(pattern: int, start: int, end: int, flags: int, context: object) -> None:
    found, ids = cast(tuple[list[tuple[list[int], int]], list[list[int]]], context)
    found.append((ids[pattern], end))


# Compiling takes about 10 MB of heap for a moment, which the allocator keeps as the process's
# peak RSS; a short-lived child compiles instead and hands over the serialised databases (~70 KB each).
_COMPILE = """
import json, struct, sys, hyperscan
out = []
for group in json.loads(sys.stdin.buffer.read()):
    anchors = [anchor.encode("latin-1") for anchor in group]
    database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        database.compile(expressions=anchors, ids=list(range(len(anchors))), elements=len(anchors),
                         flags=[0] * len(anchors))
    except hyperscan.error as exc:
        sys.exit(f"{exc}")
    serialised = hyperscan.dumpb(database)
    out.append(struct.pack("<Q", len(serialised)) + serialised)
sys.stdout.buffer.write(b"".join(out))
"""


class AnchorError(ValueError):
    """Hyperscan refused an anchor."""


def _databases(groups: Sequence[Sequence[bytes]]) -> list[tuple[hyperscan.Database, hyperscan.Scratch]]:
    """A block-mode database of each group of expressions (every match reported: the record of each one
    matters), all compiled by one child."""
    payload = orjson.dumps([[anchor.decode("latin-1") for anchor in group] for group in groups])
    child = subprocess.run([sys.executable, "-c", _COMPILE], input=payload, capture_output=True, check=False,
                           timeout=120)
    if child.returncode != 0:
        raise AnchorError(child.stderr.decode(errors="replace").strip().splitlines()[-1])
    databases = []
    view, at = child.stdout, 0
    for _ in groups:
        (size,) = struct.unpack_from("<Q", view, at)
        database = hyperscan.loadb(view[at + 8:at + 8 + size], hyperscan.HS_MODE_BLOCK)
        databases.append((database, hyperscan.Scratch(database)))
        at += 8 + size
    return databases


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


def _as_text(value: object) -> str:
    """orjson's fallback for what a forward record may hold besides JSON: bin as the text it is stored as."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot show a {type(value).__name__}")


def _strings(value: Any, out: list[str], depth: int) -> None:
    """Append the strings in ``value`` (numbers as their digits; deep containers as their JSON text)."""
    kind = type(value)
    if kind is str:
        out.append(value)
    elif kind is int:
        out.append(str(value))
    elif kind is bytes:  # msgpack bin (a forward client's): stored as text, lossy where not UTF-8
        out.append(value.decode("utf-8", "replace"))
    elif kind is list or kind is dict:
        if depth >= MAX_DEPTH:
            out.append(orjson.dumps(value, default=_as_text).decode())
            return
        for item in value.values() if kind is dict else value:
            _strings(item, out, depth + 1)
