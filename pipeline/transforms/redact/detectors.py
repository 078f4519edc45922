"""The built-in detectors: an anchor for the prefilter, a pattern to confirm, a check where a checksum exists.

Each detector has two regular expressions:

``anchor``
    run by the prefilter (:mod:`pipeline.transforms.redact.engine`, Hyperscan syntax) over the
    UTF-8 text of the scanned fields. It must match somewhere inside any text the ``pattern``
    matches: a record whose fields match no anchor is never looked at again. Several detectors
    may share one anchor (cards, phones and IPv4 share ``DIGITS``).
``pattern``
    run on the strings of the scanned fields of a record the prefilter flagged; with the
    boundaries the anchor leaves out. A group named ``value`` limits what is replaced (the token
    after ``Bearer``, the key after ``aws_secret_access_key =``).

``check`` (optional) runs on each candidate: Luhn for cards, length and mod-97 for IBANs,
octet ranges for IP addresses. It only ever sees candidates, never every record.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of sensitive value."""

    name: str
    anchors: tuple[bytes, ...]
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None


def luhn_ok(text: str) -> bool:
    """Whether the digits of ``text`` are a plausible card number: 13-19 digits, IIN 2-6, Luhn sum.

    >>> luhn_ok("4111 1111 1111 1111"), luhn_ok("4111 1111 1111 1112"), luhn_ok("1111111111111117")
    (True, False, False)
    """
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19 or digits[0] not in (2, 3, 4, 5, 6):
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_ok(text: str) -> bool:
    """Whether ``text`` (spaces allowed) is an IBAN: known country, its length, mod-97 remainder 1.

    >>> iban_ok("GB82 WEST 1234 5698 7654 32"), iban_ok("GB82 WEST 1234 5698 7654 33")
    (True, False)
    """
    compact = text.replace(" ", "")
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rotated = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rotated)) % 97 == 1


def ipv4_ok(text: str) -> bool:
    """Four octets of at most 255, without leading zeros.

    >>> ipv4_ok("192.168.0.1"), ipv4_ok("10.0.19041.1"), ipv4_ok("01.2.3.4")
    (True, False, False)
    """
    parts = text.split(".")
    return len(parts) == 4 and all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)


def ipv6_ok(text: str) -> bool:
    """A valid IPv6 address with a digit in it (``Add::add`` in Rust code is not one).

    >>> ipv6_ok("2001:db8::8a2e:370:7334"), ipv6_ok("fe80::1"), ipv6_ok("12:30:45"), ipv6_ok("Add::add")
    (True, True, False, False)
    """
    if not any(c.isdigit() for c in text) or text.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def phone_ok(text: str) -> bool:
    """Seven to fifteen digits (E.164 allows at most fifteen); with a leading 0 (national, or 00 and a
    country code) at least ten, which keeps dates and ids such as ``0228-05-19`` or ``097-88-1577`` out.

    >>> phone_ok("+44 20 7946 0958"), phone_ok("+1 2"), phone_ok("020 7946 0958"), phone_ok("0384-53-84")
    (True, False, True, False)
    """
    digits = sum(c.isdigit() for c in text)
    return (10 if text.startswith("0") else 7) <= digits <= 15


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)


# Seven characters of a number written with separators: every card, phone number and IPv4 address
# holds one (each has at least seven digits, or four numbers and three dots, and nothing else).
# One cheap anchor for the three: Hyperscan slows down several times over when their exact shapes
# share a database, and prose rarely holds such a run.
DIGITS = rb"[0-9][0-9 .()+-]{6}"

def _lead(literal: str) -> str:
    """``literal`` not glued to a word before it. The check comes after the literal, not before:
    a pattern that starts with a literal is searched for it at memchr speed (50x here)."""
    return re.escape(literal) + rf"(?<![A-Za-z0-9_]{re.escape(literal)})"


# Boundaries: not glued to a longer word, number or token.
_W = r"(?<![A-Za-z0-9_])"
_WE = r"(?![A-Za-z0-9_])"
_TOKEN_END = r"(?![A-Za-z0-9_-])"
_SEP = r"[ .-]"

BUILTIN: tuple[Detector, ...] = (
    # Longest, most specific first: a key block or a token is gone before shorter patterns see its parts.
    # A block cut short (no END line) is redacted to the end of the string: it is still a key.
    Detector("private_key", (rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----",), re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|.*\Z)", re.ASCII | re.S
    )),
    Detector("jwt", (rb"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.",), _re(
        _lead("eyJ") + r"[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*" + _TOKEN_END
    )),
    Detector("anthropic_key", (rb"sk-ant-[a-z]{3,6}[0-9]{2}-[A-Za-z0-9_-]{20}",), _re(
        _lead("sk-ant-") + r"[a-z]{3,6}[0-9]{2}-[A-Za-z0-9_-]{20,}" + _TOKEN_END
    )),
    Detector("openai_key", (rb"sk-[A-Za-z0-9_-]{20}",), _re(
        _lead("sk-") + r"(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}" + _TOKEN_END
    )),
    Detector("google_api_key", (rb"AIza[0-9A-Za-z_-]{35}",), _re(_lead("AIza") + r"[0-9A-Za-z_-]{35}" + _TOKEN_END)),
    Detector("github_token", (rb"gh[pousr]_[A-Za-z0-9]{36}", rb"github_pat_[A-Za-z0-9_]{22}"), _re(
        _lead("g") + r"(?:h[pousr]_[A-Za-z0-9]{36,}|ithub_pat_[A-Za-z0-9_]{22,})" + _WE
    )),
    Detector("gitlab_token", (rb"glpat-[A-Za-z0-9_-]{20}",), _re(_lead("glpat-") + r"[A-Za-z0-9_-]{20,}" + _TOKEN_END)),
    Detector("slack_token", (rb"xox[abposre]-[0-9A-Za-z-]{10}",), _re(
        _lead("xox") + r"[abposre]-[0-9A-Za-z-]{10,}" + _TOKEN_END
    )),
    Detector("stripe_key", (rb"[rs]k_(?:live|test)_[A-Za-z0-9]{16}",), _re(
        _W + r"[rs]k_(?:live|test)_[A-Za-z0-9]{16,}" + _WE
    )),
    # Before the access key id: the pattern reads the id to find the secret beside it.
    Detector("aws_secret_key", (rb"(?i)aws[A-Za-z0-9_ .-]{0,30}secret", rb"(?:AKIA|ASIA)[A-Z0-9]{16}"), re.compile(
        r"(?:(?i:aws[A-Za-z0-9_ .-]{0,30}secret)[A-Za-z0-9_ .-]{0,30}?[\"']?\s*[:=]?\s*[\"']?"
        r"|(?:AKIA|ASIA)[A-Z0-9]{16}[^\n]{1,40}?)"
        r"(?P<value>(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])", re.ASCII
    )),
    Detector("aws_access_key", (rb"(?:AKIA|ASIA)[A-Z0-9]{16}",), _re(_lead("A") + r"(?:KIA|SIA)[A-Z0-9]{16}" + _WE)),
    Detector("bearer_token", (rb"(?i)bearer +[A-Za-z0-9._~+/=-]{12}",), re.compile(
        r"(?i:bearer) +(?P<value>[A-Za-z0-9._~+/=-]{12,})", re.ASCII
    )),
    Detector("email", (rb"[A-Za-z0-9._%+-]@[A-Za-z0-9-]+\.[A-Za-z0-9.-]*[A-Za-z]",), _re(
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}" + _WE
    )),
    Detector("iban", (rb"[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}",), _re(
        _W + r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?" + _WE
    ), iban_ok),
    Detector("payment_card", (DIGITS,), _re(
        r"(?<![0-9A-Za-z_.+-])(?:[0-9]{13,19}|[0-9]{4}(?: [0-9]{4}){2} [0-9]{1,7}|[0-9]{4}(?:-[0-9]{4}){2}-[0-9]{1,7}"
        r"|[0-9]{4}([ -])[0-9]{6}\1[0-9]{4,5})(?![0-9A-Za-z_]|[.-][0-9])"
    ), luhn_ok),
    Detector("phone", (DIGITS,), _re(
        r"(?<![0-9A-Za-z_+.:/-])(?<![0-9][ .-])(?:"
        r"\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,2}(?:[ .-]?[0-9]{2,5}){1,4}"
        r"|00[1-9][0-9]{0,2}[ .-][0-9]{1,5}(?:[ .-][0-9]{2,5}){1,4}"
        r"|\([0-9]{2,5}\) ?[0-9]{2,4}(?:[ .-][0-9]{2,5}){1,3}"
        r"|[2-9][0-9]{2}([ .-])[0-9]{3}\1[0-9]{4}"
        r"|0[1-9][0-9]{0,3}([ .-])[0-9]{2,4}(?:\2[0-9]{2,4}){1,3}"
        r")(?![0-9A-Za-z_]|[.:/-][0-9])"
    ), phone_ok),
    Detector("ipv4", (DIGITS,), _re(
        r"(?<![0-9A-Za-z_.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9A-Za-z_]|\.[0-9])"
    ), ipv4_ok),
    # Four groups, or "::" beside a group: never a time of day ("15:55:00").
    Detector("ipv6", (rb"[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}",
                      rb"[0-9A-Fa-f]::", rb"::[0-9A-Fa-f]"), _re(
        r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{1,4}:|:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})"
        r"(?![0-9A-Za-z_:])"
    ), ipv6_ok),
)
