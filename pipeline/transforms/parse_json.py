"""Parsing: each line one JSON object; event time from a configurable key."""

from __future__ import annotations

from datetime import UTC, datetime

MAX_EPOCH = 253_402_300_799.0  # 9999-12-31T23:59:59Z: beyond it no time key can be formatted


def event_time(value: object, fallback: float) -> float:
    """Epoch seconds from a number or an ISO-8601 string; ``fallback`` when absent or unusable.

    >>> event_time(1795000000.5, 0.0), event_time("2026-11-18T11:06:40Z", 0.0)
    (1795000000.5, 1795000000.0)
    >>> event_time(True, 7.0), event_time("yesterday", 7.0), event_time(-1, 7.0)
    (7.0, 7.0, 7.0)
    """
    kind = type(value)
    if kind is float or kind is int:
        seconds = float(value)  # type: ignore[arg-type]
        return seconds if 0.0 <= seconds <= MAX_EPOCH else fallback
    if kind is str:
        return _iso_time(value, fallback)  # type: ignore[arg-type]
    return fallback


def _iso_time(text: str, fallback: float) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return fallback
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    seconds = parsed.timestamp()
    return seconds if 0.0 <= seconds <= MAX_EPOCH else fallback


def describe_error(line: bytes, exc: Exception) -> str:
    """The dead-letter reason for a line that is not a JSON object."""
    if not line.strip():
        return "empty line"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid UTF-8"
    return f"invalid JSON: {exc}"
