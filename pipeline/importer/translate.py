"""A parsed Fluentd config → logferry's TOML tables, each with the Fluentd lines it came from.

The walk: sources first (their tags), then every ``<match>`` in its scope (top level or
``<label>``) becomes outputs, then each source's records are routed the way Fluentd routes
them (:mod:`pipeline.importer.routing`) to give each output its ``match`` list and to know
which filters apply; the record_transformers reached fold into ``[enrich]``. Every
component is validated on its own as it is made, so that one refused key leaves out one
component, never the whole file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from pipeline.config import format_errors
from pipeline.importer.buffer import translate_buffer
from pipeline.importer.context import Context, Reader
from pipeline.importer.filters import Enrich, other_filter, record_transformer
from pipeline.importer.fluentd_conf import Directive
from pipeline.importer.outputs import OUTPUTS
from pipeline.importer.report import Report
from pipeline.importer.routing import Route, Target, patterns, route, route_open
from pipeline.importer.sources import SOURCES, SourceSpec
from pipeline.importer.tag_patterns import covered
from pipeline.importer.toml_writer import Table
from pipeline.registry import OutputConfig, SourceConfig
from pipeline.runtime.routing import tag_matches

DEFAULT_STATE_DIR = "/var/lib/logferry"
_LOG_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "error": "error",
               "fatal": "error"}
_OUTPUT_ADAPTER: TypeAdapter[Any] = TypeAdapter(OutputConfig)
_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceConfig)


class NothingToRun(ValueError):
    """No source or no output could be translated: there is no pipeline to write."""


@dataclass
class OutputSpec:
    """A translated output and where it came from."""

    name: str
    directive: Directive
    table: dict[str, Any]
    buffer: dict[str, Any]
    tag_key: str | None


@dataclass
class Translation:
    """The outcome: TOML tables, the same as a dict for validation, the report and the sources."""

    tables: list[Table]
    document: dict[str, Any]
    report: Report
    sources: list[SourceSpec]


@dataclass
class _Walk:
    """What the walk collects before the tables are written."""

    ctx: Context = field(default_factory=Context)
    root: dict[str, Any] = field(default_factory=dict)
    sources: list[SourceSpec] = field(default_factory=list)
    outputs: list[OutputSpec] = field(default_factory=list)
    scopes: dict[str | None, list[Directive]] = field(default_factory=lambda: {None: []})
    targets: dict[int, Target] = field(default_factory=dict)


def translate(root: Directive, state_dir: str | None = None) -> Translation:
    """Translate a whole Fluentd config (the tree :func:`~pipeline.importer.fluentd_conf.parse_file` reads)."""
    walk = _Walk()
    walk.root["state_dir"] = state_dir or DEFAULT_STATE_DIR
    for directive in root.children:
        _top_level(directive, walk)
    for scope in walk.scopes.values():
        for directive in scope:
            if directive.name == "match":
                walk.targets[id(directive)] = _match(directive, walk)
    routes = {s.name: _route(s, walk) for s in walk.sources}
    enrich = _enrich(walk, routes)
    if not walk.sources or not walk.outputs:
        raise NothingToRun(f"no {'source' if not walk.sources else 'output'} could be translated:\n"
                           + walk.ctx.report.render())
    return _assemble(walk, routes, enrich)


def _route(source: SourceSpec, walk: _Walk) -> Route:
    """The source's route; with ``tag x.*``, the first path's, and a finding if another path's differs."""
    if source.open_tags is not None:
        return _route_open(source, walk)
    first, *others = [route(tag, source.label, walk.scopes, walk.targets) for tag in source.routing_tags]
    if any(other.outputs != first.outputs for other in others):
        walk.ctx.add("approximated", source.directive.where, f"tag {source.directive.value('tag')}",
                     "Fluentd routed the files of its path patterns to different outputs; logferry sends all of "
                     "them where the first pattern's went: split the source by path to keep them apart")
    return first


def _route_open(source: SourceSpec, walk: _Walk) -> Route:
    """A source keeping its clients' tags: each output takes its ``<match>``'s patterns (see routing)."""
    assert source.open_tags is not None
    result = route_open([source.open_tags], source.label, walk.scopes, walk.targets)
    shadowing: dict[int, tuple[Directive, list[Directive]]] = {}
    for later, earlier in result.overlaps:
        shadowing.setdefault(id(later), (later, []))[1].append(earlier)
    for later, earliers in shadowing.values():
        named = ", ".join(f"{e.heading} ({e.where})" for e in earliers)
        walk.ctx.add("approximated", later.where, later.heading,
                     f"records of source {source.name} (tags chosen by its clients) whose tag an earlier match took "
                     f"in Fluentd reach this output too: {named}; logferry's match cannot leave tags out: give those "
                     "clients tags only one <match> takes")
    if source.tag_prefix:
        for name, found in result.patterns.items():
            result.patterns[name] = _without_prefix(found, source.tag_prefix, source, walk.ctx)
    return result


def _without_prefix(found: list[str], prefix: str, source: SourceSpec, ctx: Context) -> list[str]:
    """The patterns a client's own tag must match, when Fluentd matched ``prefix.tag`` (add_tag_prefix)."""
    kept = []
    for pattern in found:
        if pattern == "**" or pattern == f"{prefix}.**":
            kept.append("**")
        elif pattern.startswith(f"{prefix}."):
            kept.append(pattern.removeprefix(f"{prefix}."))
        else:
            ctx.add("refused", source.directive.where, f"add_tag_prefix {prefix}",
                    f"the pattern {pattern!r} cannot be written without the prefix: set this output's match by hand")
    return sorted(set(kept), key=kept.index)


def _top_level(directive: Directive, walk: _Walk) -> None:
    ctx = walk.ctx
    if directive.name == "source":
        handler = SOURCES.get(directive.type)
        if handler is None:
            ctx.add("refused", directive.where, f"<source> @type {directive.type}",
                    "logferry has no such input; keep td-agent for it or write JSON lines to a file logferry tails")
        elif (spec := handler(directive, ctx)) is not None and _valid_source(spec, ctx):
            walk.sources.append(spec)
    elif directive.name in ("filter", "match"):
        walk.scopes[None].append(directive)
    elif directive.name == "label":
        _label(directive, walk)
    elif directive.name == "system":
        _system(directive, walk)
    else:
        ctx.add("refused", directive.where, directive.heading, "unknown directive; left out")


def _label(directive: Directive, walk: _Walk) -> None:
    if directive.arg == "@ERROR":
        walk.ctx.add("approximated", directive.where, "<label @ERROR>",
                     "logferry keeps what it cannot parse in STATE_DIR/dead-letter/ and chunks it cannot deliver in "
                     "STATE_DIR/buffer/NAME/dead/ (logferry replay); the outputs in this label are not written")
        return
    scope = walk.scopes.setdefault(directive.arg, [])
    for child in directive.children:
        if child.name in ("filter", "match"):
            scope.append(child)
        else:
            walk.ctx.add("refused", child.where, child.heading, "unknown directive inside <label>; left out")


def _system(directive: Directive, walk: _Walk) -> None:
    reader = Reader(directive, walk.ctx, frozenset({"workers", "root_dir", "suppress_repeated_stacktrace",
                                                    "process_name", "rpc_endpoint", "enable_get_dump"}))
    level = reader.text("log_level")
    if level in _LOG_LEVELS:
        walk.root["log_level"] = _LOG_LEVELS[level]
    reader.leftovers("<system>")


def _match(directive: Directive, walk: _Walk) -> Target:
    """The outputs a ``<match>`` becomes (copy: one per ``<store>``)."""
    ctx, kind = walk.ctx, directive.type
    if kind == "copy":
        Reader(directive, ctx, frozenset({"copy_mode", "deep_copy"})).leftovers("<match> @type copy")
        names = [_output(store, walk) for store in directive.sections("store")]
        return Target([n for n in names if n])
    if kind == "relabel":
        return Target([], directive.value("@label", default="") or None)
    name = _output(directive, walk)
    return Target([name] if name else [])


def _output(directive: Directive, walk: _Walk) -> str | None:
    ctx = walk.ctx
    kind = OUTPUTS.get(directive.type)
    if directive.type in ("null", "stdout"):
        _nowhere(directive, ctx)
        return None
    if kind is None:
        ctx.add("refused", directive.where, f"{directive.heading} @type {directive.type}",
                "logferry has no such output (it has elasticsearch, opensearch, s3 and file); left out")
        return None
    name = ctx.name_for(directive, kind.default_name)
    reader = Reader(directive, ctx, kind.ignored)
    built = kind.handler(directive, reader, ctx, name)
    if built is None:
        ctx.names.discard(name)
        return None
    buffer = translate_buffer(directive, reader, ctx, kind.buffer)
    reader.leftovers(f"{directive.heading} @type {directive.type}")
    for child in directive.children:
        if child.name not in kind.sections:
            hint = ("logferry sets chunks it cannot deliver aside in STATE_DIR/buffer/NAME/dead/ (logferry replay)"
                    if child.name == "secondary" else "no equivalent in logferry; left out")
            ctx.add("refused", child.where, child.heading, hint)
    if built.finish is not None:
        built.finish(buffer)
    if buffer.flush_at_shutdown:
        walk.root["flush_at_shutdown"] = True
    spec = OutputSpec(name, directive, built.table, buffer.table, built.tag_key)
    if not _valid_output(spec, ctx):
        ctx.names.discard(name)
        return None
    walk.outputs.append(spec)
    return name


def _nowhere(directive: Directive, ctx: Context) -> None:
    """null and stdout: records stop here (stdout's use, watching them, is `logferry tap`'s)."""
    if directive.type == "null":
        ctx.add("note", directive.where, f"{directive.heading} @type null",
                "records of these tags are read and dropped (no output takes them)")
    else:
        ctx.add("refused", directive.where, f"{directive.heading} @type stdout",
                "use `logferry tap [--tag PATTERN]` to print records live; records of these tags are dropped")


def _valid_output(spec: OutputSpec, ctx: Context) -> bool:
    try:
        _OUTPUT_ADAPTER.validate_python({**spec.table, "buffer": spec.buffer})
    except ValidationError as exc:
        ctx.add("refused", spec.directive.where, f"{spec.directive.heading} @type {spec.directive.type}",
                "its translation is not valid: " + " ".join(format_errors(exc).split()) + "; left out")
        return False
    return True


def _valid_source(spec: SourceSpec, ctx: Context) -> bool:
    try:
        _SOURCE_ADAPTER.validate_python(spec.table)
    except ValidationError as exc:
        ctx.add("refused", spec.directive.where, f"<source> @type {spec.directive.type}",
                "its translation is not valid: " + " ".join(format_errors(exc).split()) + "; left out")
        return False
    return True


def _enrich(walk: _Walk, routes: dict[str, Route]) -> Enrich:
    enrich, ctx = Enrich(), walk.ctx
    reached: dict[int, set[str]] = {}
    for source, result in routes.items():
        for directive in result.filters:
            reached.setdefault(id(directive), set()).add(source)
    for scope in walk.scopes.values():
        for directive in scope:
            if directive.name != "filter":
                continue
            if id(directive) not in reached:
                ctx.add("note", directive.where, directive.heading, "no source's records reach this filter; skipped")
            elif directive.type != "record_transformer":
                other_filter(directive, ctx)
            else:
                record_transformer(directive, enrich, ctx)
                partial = [s for s in walk.sources if s.name in reached[id(directive)] and s.open_tags is not None
                           and not covered([s.open_tags], patterns(directive))]
                if reached[id(directive)] != {s.name for s in walk.sources} or partial:
                    ctx.add("approximated", directive.where, directive.heading,
                            "logferry adds [enrich] fields to the records of every source, not only these tags")
    _tag_key(walk, enrich)
    _time_key(walk, enrich)
    return enrich


def _time_key(walk: _Walk, enrich: Enrich) -> None:
    """``[enrich] time_key``: the sources' parse time_key (logferry has one for all)."""
    times = sorted({s.time_key for s in walk.sources if s.time_key})
    tailed = [s for s in walk.sources if s.open_tags is None and s.table["type"] == "tail"]
    where = tailed[0].directive.where if tailed else "-"
    if not times and not tailed:
        return  # forwarded records carry their event time; logferry writes it under time_key if absent
    if not times:
        walk.ctx.add("approximated", where, "<parse> time_key",
                     "Fluentd took the event time from `time` (and removed it from the record); logferry takes it "
                     "from `timestamp` ([enrich] time_key) and keeps every field")
        return
    enrich.table["time_key"] = times[0]
    if len(times) > 1:
        walk.ctx.add("approximated", where, "time_key",
                     f"sources use {times}; logferry has one event-time key for all: {times[0]!r}")


def _tag_key(walk: _Walk, enrich: Enrich) -> None:
    wanting = [o for o in walk.outputs if o.tag_key]
    if not wanting:
        return
    keys = {o.tag_key for o in wanting}
    chosen = enrich.table["tag_key"] or sorted(k for k in keys if k)[0]
    enrich.table["tag_key"] = chosen
    enrich.origins += [f"{o.directive.where} include_tag_key of {o.name}" for o in wanting]
    if len(wanting) < len(walk.outputs) or keys != {chosen}:
        walk.ctx.add("approximated", wanting[0].directive.where, "include_tag_key true",
                     f"the tag is written as {chosen!r} into the records of every output ([enrich] tag_key)")


def _assemble(walk: _Walk, routes: dict[str, Route], enrich: Enrich) -> Translation:
    tags = {s.name: s.table["tag"] for s in walk.sources if s.open_tags is None}
    doc: dict[str, Any] = {**walk.root, "enrich": enrich.table, "sources": {}, "outputs": {}}
    tables = [Table((), dict(walk.root)),
              Table(("enrich",), enrich.table, _origin_lines("fields added to every record", enrich.origins))]
    for spec in walk.sources:
        doc["sources"][spec.name] = spec.table
        tables.append(Table(("sources", spec.name), spec.table,
                            _origin_lines("", [f"{spec.directive.where} <source> @type {spec.directive.type}"])))
    for out in walk.outputs:
        match = sorted({tags[s] for s, r in routes.items() if out.name in r.outputs and s in tags})
        for pattern in (p for r in routes.values() for p in r.patterns.get(out.name, [])):
            if pattern not in match:
                match.append(pattern)
        _shared_tags(out, match, routes, tags, walk.ctx)
        if not match:
            walk.ctx.add("note", out.directive.where, f"{out.directive.heading} @type {out.directive.type}",
                         "no source of this config reaches it (match = []); give it tags by hand if others will")
        table = {"type": out.table["type"], "match": match, **{k: v for k, v in out.table.items() if k != "type"}}
        doc["outputs"][out.name] = {**table, "buffer": out.buffer}
        tables.append(Table(("outputs", out.name), table, _origin_lines(
            "", [f"{out.directive.where} {out.directive.heading} @type {out.directive.type}"])))
        if out.buffer:
            tables.append(Table(("outputs", out.name, "buffer"), out.buffer))
    return Translation(tables, doc, walk.ctx.report, walk.sources)


def _shared_tags(out: OutputSpec, match: list[str], routes: dict[str, Route], tags: dict[str, str],
                 ctx: Context) -> None:
    """Sources whose tag another source's route put in ``match`` reach this output too."""
    for source, result in routes.items():
        if source not in tags or out.name in result.outputs or not tag_matches(match, tags[source]):
            continue
        if tags[source] in match:
            why = f"source {source} has the tag {tags[source]!r} too"
        else:
            why = f"the tag {tags[source]!r} of source {source} matches a pattern written for a forward source"
        ctx.add("approximated", out.directive.where, f"{out.directive.heading} @type {out.directive.type}",
                f"{why}, so its records reach this output as well (Fluentd routed them elsewhere): give the "
                "sources distinct tags")


def _origin_lines(title: str, origins: list[str]) -> list[str]:
    lines = [title] if title else []
    if not origins:
        return [*lines, "(nothing in the Fluentd config adds fields)"]
    return lines + [f"from {origin}" for origin in origins]
