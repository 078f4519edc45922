"""Fluentd's routing, worked out per source: which outputs and filters each source's records reach.

In Fluentd a record goes through the ``<filter>``s matching its tag, in order, up to the
first ``<match>`` whose pattern matches, and stops there (``@type copy`` fans out inside
that match; ``relabel`` and a source's ``@label`` move it into a ``<label>``). In logferry
every output takes every record whose tag its ``match`` list matches. Since the import
knows every tailed source's tag, it follows Fluentd's walk for each and gives each output
the exact tags that reach it: first-match order is reproduced, not approximated.

A source that keeps its clients' tags (forward) has no tag known in advance:
:func:`route_open` walks the patterns instead. An output then takes its ``<match>``'s
patterns, and since logferry's ``match`` cannot exclude, tags an earlier ``<match>`` took
as well are listed in :attr:`Route.overlaps` for the report.

>>> from pipeline.importer.fluentd_conf import parse_text
>>> root = parse_text("<match ai.x>\\n@type null\\n</match>\\n<match ai.**>\\n@type file\\n</match>", "t")
>>> first, second = root.children
>>> scopes = {None: [first, second]}
>>> targets = {id(first): Target([]), id(second): Target(["file"])}
>>> route("ai.x", None, scopes, targets).outputs, route("ai.y", None, scopes, targets).outputs
(set(), {'file'})
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.importer.fluentd_conf import Directive
from pipeline.importer.tag_patterns import covered, overlaps
from pipeline.runtime.routing import tag_matches


@dataclass
class Target:
    """What one ``<match>`` became: the outputs it feeds, or the label it sends records to."""

    outputs: list[str]
    relabel: str | None = None


@dataclass
class Route:
    """Where one source's records end up."""

    outputs: set[str] = field(default_factory=set)
    filters: list[Directive] = field(default_factory=list)
    matched: Directive | None = None
    patterns: dict[str, list[str]] = field(default_factory=dict)  # open sources: output → its match patterns
    overlaps: list[tuple[Directive, Directive]] = field(default_factory=list)  # (match, earlier match it shares)


def patterns(directive: Directive) -> list[str]:
    """The tag patterns of ``<match a b>`` / ``<filter a>`` (none written: every tag)."""
    return directive.arg.split() or ["**"]


def route(tag: str, label: str | None, scopes: dict[str | None, list[Directive]],
          targets: dict[int, Target], depth: int = 0) -> Route:
    """Follow a record tagged ``tag`` from ``label`` (None: the top level) to its first match."""
    result = Route()
    for directive in scopes.get(label, []):
        if not tag_matches(patterns(directive), tag):
            continue
        if directive.name == "filter":
            result.filters.append(directive)
            continue
        target = targets.get(id(directive), Target([]))
        result.matched = directive
        if target.relabel is not None and depth < 8:
            inner = route(tag, target.relabel, scopes, targets, depth + 1)
            inner.filters[:0] = result.filters
            return inner
        result.outputs = set(target.outputs)
        return result
    return result


def route_open(within: list[list[str]], label: str | None, scopes: dict[str | None, list[Directive]],
               targets: dict[int, Target], taken: tuple[list[str], ...] = (), depth: int = 0) -> Route:
    """Follow records whose tags are only known to match every list of ``within`` from ``label``.

    ``taken`` holds the patterns of the matches that took their tags earlier (outside a
    label entered by relabel). Each ``<match>`` some of those tags still reach gives its
    outputs its patterns; each earlier one it overlaps is noted, since logferry's outputs
    cannot leave those tags out.
    """
    result = Route()
    earlier: list[Directive] = []
    for directive in scopes.get(label, []):
        mine = patterns(directive)
        gone = [p for group in taken for p in group] + [p for d in earlier for p in patterns(d)]
        if not overlaps_all([*within, mine]) or covered([*within, mine], gone):
            continue
        if directive.name == "filter":
            result.filters.append(directive)
            continue
        target = targets.get(id(directive), Target([]))
        if target.relabel is not None and depth < 8:
            inner = route_open([*within, mine], target.relabel, scopes, targets, (*taken, *map(patterns, earlier)),
                               depth + 1)
            _merge(result, inner)
        else:
            result.overlaps += [(directive, d) for d in earlier if overlaps_all([*within, mine, patterns(d)])]
            written = narrowest([*within, [p for p in mine if overlaps_all([*within, [p]])]])
            for name in target.outputs:
                result.outputs.add(name)
                result.patterns.setdefault(name, []).extend(p for p in written if p not in result.patterns[name])
        earlier.append(directive)
    return result


def overlaps_all(groups: list[list[str]]) -> bool:
    """Whether some tag matches every one of the pattern lists."""
    return not covered(groups, []) if len(groups) != 2 else overlaps(*groups)


def narrowest(groups: list[list[str]]) -> list[str]:
    """The pattern list that every other one covers (their intersection), else the last one.

    >>> narrowest([["**"], ["batch.**"], ["**"]]), narrowest([["a.*"], ["*.b"]])
    (['batch.**'], ['*.b'])
    """
    for group in reversed(groups):
        if all(covered([group], other) for other in groups):
            return group
    return groups[-1]


def _merge(into: Route, inner: Route) -> None:
    into.filters += [f for f in inner.filters if f not in into.filters]
    into.outputs |= inner.outputs
    into.overlaps += inner.overlaps
    for name, found in inner.patterns.items():
        into.patterns.setdefault(name, []).extend(p for p in found if p not in into.patterns[name])
