"""``<source>`` directives → ``[sources.NAME]`` tables, one handler per Fluentd input type.

Adding a type is one entry in :data:`SOURCES`: a function from the directive to a
:class:`SourceSpec` (or None after reporting why not).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.importer import values
from pipeline.importer.context import Context, Reader
from pipeline.importer.fluentd_conf import Directive

#: in_tail parameters that need nothing in logferry (it always follows inodes, uses inotify, ...).
TAIL_IGNORED = frozenset({
    "follow_inodes", "enable_watch_timer", "enable_stat_watcher", "open_on_every_update", "read_lines_limit",
    "read_bytes_limit_per_second", "skip_refresh_on_startup", "ignore_repeated_permission_error", "pos_file",
    "pos_file_compaction_interval", "emit_unmatched_lines", "@label", "tag", "path",
    "exclude_path", "read_from_head", "rotate_wait", "refresh_interval", "format", "time_key", "time_format",
    "keep_time_key", "path_timezone",
})
PARSE_IGNORED = frozenset({"time_format", "time_type", "keep_time_key", "json_parser", "estimate_current_event",
                           "timezone", "utc", "localtime", "null_empty_string", "time_key"})
_GLOB = re.compile(r"[*?\[\]{}]+")


@dataclass
class SourceSpec:
    """A translated source: its table, its tag for routing, and what the cut-over needs."""

    name: str
    directive: Directive
    table: dict[str, Any]
    routing_tags: list[str]  # the tags Fluentd would give its records (per path pattern for ``tag x.*``)
    label: str | None = None
    pos_file: str | None = None
    time_key: str | None = None
    notes: list[str] = field(default_factory=list)


SourceHandler = Callable[[Directive, Context], SourceSpec | None]


def tail(directive: Directive, ctx: Context) -> SourceSpec | None:
    """in_tail: JSON lines only, followed by glob, with rotation."""
    reader = Reader(directive, ctx, TAIL_IGNORED)
    parsed = _json_parser(directive, reader, ctx)
    paths = reader.get(values.string_list, "path")
    tag = reader.text("tag")
    if parsed is None or not paths or not tag:
        if parsed is not None:
            ctx.add("refused", directive.where, "<source> @type tail", "needs path and tag; left out")
        return None
    table: dict[str, Any] = {"type": "tail", "paths": paths}
    reader.put(table, "exclude", values.string_list, "exclude_path")
    table["tag"] = _fixed_tag(tag, directive, ctx)
    table["format"] = "json"
    table["read_from_head"] = reader.get(values.boolean, "read_from_head") or False
    reader.put(table, "rescan_interval", values.seconds, "refresh_interval")
    reader.put(table, "rotate_wait", values.seconds, "rotate_wait")
    reader.put(table, "max_line_bytes", values.size, "max_line_size")
    if (recent := reader.param("limit_recently_modified")) is not None:
        ctx.add("approximated", recent.where, f"limit_recently_modified {recent.value}",
                "logferry follows every matching file, however old (exclude old ones with exclude_path)")
    name = ctx.name_for(directive, "tail")
    reader.leftovers("<source> @type tail")
    return SourceSpec(name, directive, table, [_routing_tag(tag, p) for p in paths], directive.value("@label"),
                      reader.text("pos_file"), parsed or None)


def not_yet(type_name: str, expected: str) -> SourceHandler:
    """A handler for a type logferry will have, reported until then with the keys it will take."""

    def handler(directive: Directive, ctx: Context) -> SourceSpec | None:
        ctx.add("refused", directive.where, f"<source> @type {type_name}",
                f"coming in a later logferry ({expected}); keep td-agent for this input until then")
        return None

    return handler


SOURCES: dict[str, SourceHandler] = {
    "tail": tail,
    "forward": not_yet("forward", "port → port, bind → bind, <security> shared_key → shared_key_file"),
}


def _json_parser(directive: Directive, reader: Reader, ctx: Context) -> str | None:
    """The parse's time key ("" for none) when lines are JSON; None (reported) otherwise."""
    sections = directive.sections("parse")
    if sections:
        parse = sections[-1]
        kind, where = parse.type, parse.where
        parse_reader = Reader(parse, ctx, PARSE_IGNORED)
        time_key = parse.value("time_key", default="") or ""
    else:
        kind, where = reader.text("format") or "", directive.where
        parse_reader, time_key = None, directive.value("time_key", default="") or ""
    if kind != "json":
        ctx.add("refused", where, f"<source> @type tail with parser {kind or '(none)'}",
                "logferry reads JSON lines only: have the application write JSON lines, or keep td-agent "
                "for this source; left out")
        return None
    if parse_reader is not None:
        parse_reader.leftovers("<parse> @type json")
    _time_differences(sections[-1] if sections else directive, time_key, ctx)
    return time_key


def _time_differences(parse: Directive, time_key: str, ctx: Context) -> None:
    """What Fluentd did with the event-time field that logferry does not (its key is [enrich] time_key)."""
    if not time_key:
        return  # Fluentd's `time`: reported once for all sources (translate._enrich)
    if (parse.value("keep_time_key", default="") or "").lower() not in ("true", "yes"):
        ctx.add("approximated", parse.where, f"time_key {time_key}",
                f"Fluentd removed `{time_key}` from the record (keep_time_key false); logferry keeps it")
    time_format = parse.param("time_format")
    if time_format is not None and parse.value("time_type", default="string") == "string":
        ctx.add("approximated", time_format.where, f"time_format {time_format.value}",
                f"logferry reads `{time_key}` as epoch seconds or ISO-8601 only; other values get the ingest time")


def _fixed_tag(tag: str, directive: Directive, ctx: Context) -> str:
    if "*" not in tag:
        return tag
    fixed = re.sub(r"\.?\*\.?", ".", tag).strip(".") or "tail"
    ctx.add("approximated", directive.where, f"tag {tag}",
            f"Fluentd puts each file's path in the tag; logferry gives every record the tag {fixed!r} "
            "(routing was worked out for the paths in `path`)")
    return fixed


def _routing_tag(tag: str, path: str) -> str:
    """The tag Fluentd gives lines of a file matching ``path`` (glob characters stand for a name).

    >>> _routing_tag("app.*", "/var/log/ai/*.log"), _routing_tag("ai.interactions", "/x")
    ('app.var.log.ai.x.log', 'ai.interactions')
    """
    if "*" not in tag:
        return tag
    return tag.replace("*", _GLOB.sub("x", path).strip("/").replace("/", "."))
