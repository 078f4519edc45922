"""State shared while translating one Fluentd config: the report, names given, and parameter reading.

:class:`Reader` reads a directive's parameters through the value converters and
remembers which ones it read, so that every parameter the translator did not
understand ends up in the report instead of being dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pipeline.importer.fluentd_conf import Directive, Param
from pipeline.importer.report import Kind, Report
from pipeline.importer.values import BadValue

T = TypeVar("T")
_NAME = re.compile(r"[^A-Za-z0-9_-]+")
#: Parameter names whose values the report never repeats.
_SECRET_LOOKING = re.compile(r"pass|secret|token|key|credential|auth", re.IGNORECASE)
#: Parameters every plugin accepts that mean nothing to logferry.
COMMON_IGNORED = frozenset({"@type", "type", "@id", "id", "@log_level", "log_level"})


@dataclass
class Context:
    """The report and the component names taken so far."""

    report: Report = field(default_factory=Report)
    names: set[str] = field(default_factory=set)

    def name_for(self, directive: Directive, fallback: str) -> str:
        """A component name: the directive's ``@id`` if usable, else ``fallback``; unique.

        >>> ctx = Context()
        >>> ctx.name_for(Directive("source", "", "f", 1), "tail"), ctx.name_for(Directive("source", "", "f", 5), "tail")
        ('tail', 'tail_2')
        """
        wanted = _NAME.sub("_", directive.value("@id", "id", default="") or fallback).strip("_") or fallback
        name, n = wanted, 1
        while name in self.names:
            n += 1
            name = f"{wanted}_{n}"
        self.names.add(name)
        return name

    def add(self, kind: Kind, where: str, directive: str, message: str) -> None:
        """Add a finding to the report."""
        self.report.add(kind, where, directive, message)


class Reader:
    """Reads one directive's parameters and reports the ones left unread."""

    def __init__(self, directive: Directive, ctx: Context, ignored: frozenset[str] = frozenset()) -> None:
        self.directive = directive
        self.ctx = ctx
        self.read: set[str] = set(COMMON_IGNORED | ignored)

    def param(self, *keys: str) -> Param | None:
        """The parameter (last of ``keys`` written), marked as read."""
        self.read.update(keys)
        return self.directive.param(*keys)

    def get(self, convert: Callable[[str], T], *keys: str) -> T | None:
        """A converted value, or None when absent or invalid (an invalid one is reported)."""
        found = self.param(*keys)
        if found is None:
            return None
        if found.ruby:
            origin = f"td-agent read ${found.env}" if found.env else "Ruby code in a value is evaluated by Fluentd only"
            self.ctx.add("refused", found.where, f"{found.key} {found.value}",
                         f"{origin}; write the value it yields by hand")
            return None
        try:
            return convert(found.value)
        except BadValue as exc:
            self.ctx.add("refused", found.where, f"{found.key} {found.value}", str(exc))
            return None

    def text(self, *keys: str) -> str | None:
        """A string value (see :meth:`get`)."""
        return self.get(str, *keys)

    def put(self, table: dict[str, Any], ours: str, convert: Callable[[str], Any], *keys: str) -> None:
        """Set ``table[ours]`` from the first of ``keys`` present (converted)."""
        found = self.get(convert, *keys)
        if found is not None:
            table[ours] = found

    def leftovers(self, what: str) -> None:
        """Report every parameter no one read: logferry has no equivalent for it."""
        for param in self.directive.params:
            if param.key not in self.read:
                shown = "(value hidden)" if _SECRET_LOOKING.search(param.key) else param.value
                self.ctx.add("refused", param.where, f"{param.key} {shown}".strip(),
                             f"{what} has no such setting in logferry; left out")
