"""Tag routing, fluentd-style: ``*`` matches one tag part, ``**`` any number, ``{a,b}`` either."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.buffer.file_buffer import FileBuffer


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            # "a.**" also matches "a" (fluentd): swallow the dot before "**"
            if out and out[-1] == r"\.":
                out[-1] = r"(?:\..*)?"
            else:
                out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(r"[^.]*")
            i += 1
        elif pattern[i] == "{":
            end = pattern.index("}", i)
            out.append("(?:" + "|".join(re.escape(p) for p in pattern[i + 1 : end].split(",")) + ")")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def tag_matches(patterns: list[str], tag: str) -> bool:
    """Whether ``tag`` matches any of ``patterns``.

    >>> tag_matches(["ai.*"], "ai.interactions"), tag_matches(["ai.*"], "ai.x.y")
    (True, False)
    >>> tag_matches(["**"], "anything.at.all"), tag_matches(["ai.**"], "ai")
    (True, True)
    >>> tag_matches(["{ai,ml}.interactions"], "ml.interactions")
    True
    """
    return any(_compile(p).match(tag) for p in patterns)


class TagRoutes(dict[str, list["FileBuffer"]]):
    """Source name → the buffers its records go to, by the source's configured tag.

    A source whose batches carry their own tag (a forward source keeping its clients'
    tags) is routed per batch instead: :meth:`of` matches that tag against every
    output's ``match`` patterns, once per tag.
    """

    def __init__(self, fixed: dict[str, list[FileBuffer]], outputs: list[tuple[list[str], FileBuffer]],
                 by_record_tag: set[str]) -> None:
        super().__init__(fixed)
        self.outputs = outputs
        self.by_record_tag = by_record_tag
        self._by_tag: dict[str, list[FileBuffer]] = {}

    def of(self, source: str, tag: str) -> list[FileBuffer]:
        """The buffers a batch of ``source`` tagged ``tag`` goes to."""
        if source not in self.by_record_tag:
            return self.get(source, [])
        routed = self._by_tag.get(tag)
        if routed is None:
            if len(self._by_tag) > 4096:  # clients choose tags: keep the cache bounded
                self._by_tag.clear()
            routed = self._by_tag[tag] = [b for patterns, b in self.outputs if tag_matches(patterns, tag)]
        return routed
