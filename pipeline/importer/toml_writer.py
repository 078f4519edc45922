"""A small TOML emitter that puts comments above tables (tomli-w writes no comments).

It writes what an imported config holds and nothing more: strings, booleans, integers,
floats, lists of those, and inline tables of those (``fields = { env = "prod" }``).
Strings are written as basic strings with JSON's escapes, which TOML shares; the tests
read every output back with ``tomllib``.

>>> print(render([Table((), {"state_dir": "/var/lib/logferry"}),
...               Table(("outputs", "search"), {"type": "elasticsearch", "hosts": ["http://es:9200"]},
...                     ["from a.conf:10-20"])]), end="")
state_dir = "/var/lib/logferry"
<BLANKLINE>
# from a.conf:10-20
[outputs.search]
type = "elasticsearch"
hosts = ["http://es:9200"]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Table:
    """One ``[a.b]`` table (``()`` is the root) with its comment lines."""

    path: tuple[str, ...]
    values: dict[str, Any]
    comments: list[str] = field(default_factory=list)


def render(tables: list[Table], header: list[str] | None = None) -> str:
    """The document: an optional header comment, then each table in order."""
    blocks = ["".join(f"# {line}\n" for line in header)] if header else []
    for table in tables:
        lines = [f"# {line}" if line else "#" for line in table.comments]
        if table.path:
            lines.append("[" + ".".join(key(part) for part in table.path) + "]")
        lines += [f"{key(k)} = {value(v)}" for k, v in table.values.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def key(name: str) -> str:
    """A key, quoted when it is not a bare key.

    >>> key("hostname"), key("@timestamp")
    ('hostname', '"@timestamp"')
    """
    return name if _BARE_KEY.match(name) else _string(name)


def value(item: Any) -> str:
    """One value in TOML syntax.

    >>> value(True), value(3600), value(0.5), value(["a", 1]), value({"env": "prod"})
    ('true', '3600', '0.5', '["a", 1]', '{ env = "prod" }')
    """
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if not math.isfinite(item):
            raise ValueError(f"TOML value {item!r}: not finite")
        return repr(item)
    if isinstance(item, str):
        return _string(item)
    if isinstance(item, list):
        return "[" + ", ".join(value(v) for v in item) + "]"
    if isinstance(item, dict):
        return "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }" if item else "{}"
    raise TypeError(f"no TOML form for {type(item).__name__}")


def _string(text: str) -> str:
    return orjson.dumps(text).decode()
