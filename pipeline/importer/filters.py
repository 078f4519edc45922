"""``<filter>`` record_transformer → ``[enrich]``; other filters are reported.

logferry's ``[enrich]`` adds the same fields to every record: the host name, the ingest
time, the tag and static fields. A record_transformer's ``<record>`` maps onto it when
its values are those:

====================================  =====================================================
Fluentd value                          ``[enrich]``
====================================  =====================================================
``"#{Socket.gethostname}"``,           ``hostname_key`` (the machine's name, as Fluentd's)
``${hostname}``
``"#{Time.now}"`` and variants         ``ingested_at_key``: each record's ingest time.
                                       Fluentd evaluates ``"#{...}"`` once, when it loads its
                                       config: every record got td-agent's start time.
``${tag}``                             ``tag_key``
a plain string                         ``fields``
====================================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.importer import values
from pipeline.importer.context import Context, Reader
from pipeline.importer.fluentd_conf import Directive, Param

_HOSTNAME = ("#{Socket.gethostname}", "${hostname}", "#{Socket.gethostname()}")
FILTER_IGNORED = frozenset({"auto_typecast"})


@dataclass
class Enrich:
    """The ``[enrich]`` table being built, and the Fluentd lines it comes from."""

    table: dict[str, Any] = field(default_factory=lambda: {"hostname_key": "", "ingested_at_key": "",
                                                           "tag_key": "", "fields": {}})
    origins: list[str] = field(default_factory=list)

    def set_key(self, ours: str, name: str, param: Param, ctx: Context) -> None:
        """Point ``ours`` (hostname_key, ...) at ``name``; a second, different key is refused."""
        current = self.table.get(ours)
        if current and current != name:
            ctx.add("refused", param.where, f"{param.key} {param.value}",
                    f"logferry writes this value under one key only ({current!r}); add it by hand if both are needed")
            return
        self.table[ours] = name


def record_transformer(directive: Directive, enrich: Enrich, ctx: Context) -> None:
    """Fold one record_transformer into ``enrich``."""
    reader = Reader(directive, ctx, FILTER_IGNORED)
    if reader.get(values.boolean, "enable_ruby"):
        param = reader.param("enable_ruby")
        assert param is not None
        ctx.add("refused", param.where, "enable_ruby true", "logferry runs no Ruby; the fields below that need it "
                "are listed one by one")
    for key in ("renew_record", "remove_keys", "keep_keys", "renew_time_key"):
        if (param := reader.param(key)) is not None:
            ctx.add("refused", param.where, f"{key} {param.value}", "logferry only adds fields; records keep theirs")
    for section in directive.sections("record"):
        for param in section.params:
            _field(param, enrich, ctx)
    enrich.origins.append(f"{directive.where} {directive.heading} @type record_transformer")
    reader.leftovers("<filter> @type record_transformer")


def _field(param: Param, enrich: Enrich, ctx: Context) -> None:
    raw = param.value.strip()
    if raw in _HOSTNAME:
        enrich.set_key("hostname_key", param.key, param, ctx)
    elif raw == "${tag}":
        enrich.set_key("tag_key", param.key, param, ctx)
    elif param.ruby and "Time.now" in raw:
        enrich.set_key("ingested_at_key", param.key, param, ctx)
        ctx.add("approximated", param.where, f"{param.key} {param.value}",
                "each record's ingest time, ISO-8601 UTC with milliseconds (Fluentd evaluated this once, at start)")
    elif param.ruby or "${" in raw:
        ctx.add("refused", param.where, f"{param.key} {param.value}",
                "computed per record by Fluentd; logferry adds host name, ingest time, tag and static fields only")
    else:
        enrich.table["fields"][param.key] = param.value


def other_filter(directive: Directive, ctx: Context) -> None:
    """A filter logferry has no equivalent for."""
    kind = directive.type or "(none)"
    hint = ("use `logferry tap` to watch records live" if kind == "stdout"
            else "logferry adds fields only ([enrich]); filter or reshape records in the application")
    ctx.add("refused", directive.where, f"{directive.heading} @type {kind}", hint)
