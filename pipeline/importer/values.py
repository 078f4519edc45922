"""Fluentd's value types: times (``60s``, ``1h``), sizes (``8m``, ``256MB``), booleans, lists.

Fluentd reads sizes with binary multiples and a time's unit from its suffix; a bare
number is seconds or bytes.

>>> seconds("1h"), seconds("30"), seconds("1.5m"), size("256MB"), size("8k"), boolean("yes")
(3600.0, 30.0, 90.0, 268435456, 8192, True)
"""

from __future__ import annotations

import re

import orjson

_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MULTIPLES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class BadValue(ValueError):
    """A value Fluentd would refuse too."""


def seconds(text: str) -> float:
    """A Fluentd time value in seconds."""
    match = _TIME.match(text)
    if not match:
        raise BadValue(f"{text!r} is not a time (e.g. 30s, 5m, 1h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]


def size(text: str) -> int:
    """A Fluentd size value in bytes."""
    match = _SIZE.match(text)
    if not match:
        raise BadValue(f"{text!r} is not a size (e.g. 8m, 256MB, 1g)")
    return int(float(match.group(1)) * _MULTIPLES[match.group(2).lower()])


def boolean(text: str) -> bool:
    """A Fluentd boolean (``true``/``yes``; an empty value is true, as a flag)."""
    lowered = text.strip().lower()
    if lowered in ("", "true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    raise BadValue(f"{text!r} is not a boolean (true or false)")


def string_list(text: str) -> list[str]:
    """A Fluentd array: JSON (``["a", "b"]``) or comma-separated (``a,b``).

    >>> string_list('["/a/*.log", "/b.log"]'), string_list("/a/*.log, /b.log")
    (['/a/*.log', '/b.log'], ['/a/*.log', '/b.log'])
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            parsed = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise BadValue(f"{text!r} is not a JSON array") from exc
        return [str(item) for item in parsed]
    return [part.strip() for part in stripped.split(",") if part.strip()]


def whole(value: float) -> int | float:
    """``3600.0`` as ``3600`` (TOML reads more naturally), other values as they are."""
    return int(value) if float(value).is_integer() else value
