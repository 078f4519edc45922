"""Fluentd's routing, worked out per source: which outputs and filters each source's records reach.

In Fluentd a record goes through the ``<filter>``s matching its tag, in order, up to the
first ``<match>`` whose pattern matches, and stops there (``@type copy`` fans out inside
that match; ``relabel`` and a source's ``@label`` move it into a ``<label>``). In logferry
every output takes every record whose tag its ``match`` list matches. Since the import
knows every source's tag, it follows Fluentd's walk for each source and gives each output
the exact tags that reach it: first-match order is reproduced, not approximated.

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
