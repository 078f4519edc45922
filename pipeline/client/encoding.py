"""JSON encoding of interaction records that never raises on odd values.

orjson is used when it is installed, the standard library's :mod:`json` otherwise. Both produce one
line of strict JSON (UTF-8, no NaN/Infinity, no raw newlines) terminated by ``\\n``. Values JSON cannot
represent are converted instead of raising: datetime/date/time to ISO-8601, bytes to UTF-8 text (invalid
sequences replaced), Decimal to float (non-finite ones to str), set/tuple to list, Enum to its value,
dataclasses and pydantic models to dicts, anything else to ``str(value)``. Non-str dict keys become str,
non-finite floats become null, integers outside 64 bits become str, cycles become ``"<circular>"``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from decimal import Decimal
from types import ModuleType
from typing import Any

__all__ = ["HAVE_ORJSON", "encode_line", "encode_line_orjson", "encode_line_stdlib", "to_jsonable"]

_MAX_DEPTH = 100
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def _load_orjson() -> ModuleType | None:
    try:
        import orjson
    except ImportError:
        return None
    return orjson


_orjson = _load_orjson()
HAVE_ORJSON: bool = _orjson is not None
"""True when orjson is importable and used by :func:`encode_line`."""


def _convert(obj: Any) -> Any:
    """Turn one value the encoders cannot handle into something they can (``default=`` hook)."""
    try:
        converted = _convert_known(obj)
    except Exception:  # noqa: BLE001 - a failing conversion falls back to str() below
        converted = _UNKNOWN
    if converted is not _UNKNOWN:
        return converted
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 - even str() may fail on hostile objects
        return f"<unprintable {type(obj).__name__}>"


_UNKNOWN: Any = object()


def _convert_known(obj: Any) -> Any:
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, Decimal):
        return float(obj) if obj.is_finite() else str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, AbstractSet):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, str):
        return list(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    for method, kwargs in (("model_dump", {"mode": "json"}), ("tolist", {})):
        func = getattr(obj, method, None)
        if callable(func):
            return func(**kwargs)
    return _UNKNOWN


def _key(key: Any) -> str:
    if isinstance(key, str):
        return _clean_str(key)
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    converted = _convert(key)
    return _clean_str(converted if isinstance(converted, str) else str(converted))


def _clean_str(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def to_jsonable(obj: Any, _depth: int = 0, _path: frozenset[int] = frozenset()) -> Any:
    """Return a deep copy of ``obj`` made only of dict (str keys), list, str, int, float, bool and None.

    This is the slow, thorough path used when the fast encoders reject a record.
    """
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj) if _INT_MIN <= obj <= _INT_MAX else str(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, str):
        return _clean_str(obj)
    if _depth >= _MAX_DEPTH:
        return "<max depth exceeded>"
    if id(obj) in _path:
        return "<circular>"
    if isinstance(obj, Mapping | list | tuple | AbstractSet):
        path = _path | {id(obj)}
        if isinstance(obj, Mapping):
            return {_key(k): to_jsonable(v, _depth + 1, path) for k, v in obj.items()}
        items = _convert(obj) if isinstance(obj, AbstractSet) else obj
        return [to_jsonable(v, _depth + 1, path) for v in items]
    if isinstance(obj, numbers.Integral):
        return to_jsonable(int(obj), _depth + 1, _path)
    converted = _convert(obj)
    if isinstance(converted, str):
        return _clean_str(converted)
    return to_jsonable(converted, _depth + 1, _path | {id(obj)})


def encode_line_stdlib(record: Mapping[str, Any]) -> bytes:
    """Encode ``record`` as one ``\\n``-terminated line of JSON with the standard library's :mod:`json`."""
    # Through to_jsonable first: json.dumps never calls ``default`` for an int, and would write
    # one beyond 64 bits (say in a set) as a literal that orjson-based readers turn into a float.
    text = json.dumps(to_jsonable(record), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8", "replace") + b"\n"


def encode_line_orjson(record: Mapping[str, Any]) -> bytes:
    """Encode ``record`` as one ``\\n``-terminated line of JSON with orjson (requires orjson)."""
    if _orjson is None:
        raise RuntimeError("orjson is not installed")
    options = _orjson.OPT_APPEND_NEWLINE
    try:
        line: bytes = _orjson.dumps(
            record,
            default=_convert,
            option=options | _orjson.OPT_NON_STR_KEYS | _orjson.OPT_SERIALIZE_NUMPY,
        )
    except (TypeError, ValueError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        line = _orjson.dumps(to_jsonable(record), option=options)
    return line


encode_line: Callable[[Mapping[str, Any]], bytes] = encode_line_orjson if HAVE_ORJSON else encode_line_stdlib
"""Encode a record as one JSON line: orjson when available, the standard library otherwise."""
