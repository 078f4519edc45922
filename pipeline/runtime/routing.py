"""Tag routing, fluentd-style: ``*`` matches one tag part, ``**`` any number, ``{a,b}`` either."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.buffer.file_buffer import FileBuffer


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    """Fluentd's ``MatchPattern`` (lib/fluent/match.rb), translated: ``*`` one tag part, ``**`` any number of
    parts (none included: ``a.**`` matches ``a``, ``**.a`` matches ``a``), ``{x,y}`` either whole pattern (each
    may hold ``*`` and ``**``, and braces), a backslash escapes, and ``/regex/`` is a regular expression."""
    if len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/"):
        return re.compile(r"\A(?:" + pattern[1:-1] + r")\Z")
    return re.compile(r"\A" + _Translation(pattern).regex() + r"\Z")


class _Translation:
    """One glob pattern read into a regular expression, character by character, as fluentd reads it."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.stack: list[list[str]] = []  # the alternatives of each open brace
        self.parts = [""]  # the expression being built, one per open brace (the last is the innermost)
        self.dot = False  # a "." read, not yet written: "a.**" writes it otherwise

    def regex(self) -> str:
        pattern, i = self.pattern, 0
        while i < len(pattern):
            if pattern[i] == "\\" and i + 1 < len(pattern):
                self._flush_dot()
                self.parts[-1] += re.escape(pattern[i + 1])
                i += 2
            elif pattern.startswith("**", i):
                i = self._any_parts(i)
            else:
                self._one(pattern[i])
                i += 1
        self._flush_dot()
        while self.stack:  # an unclosed brace (refused in a config: check_pattern): what follows is its last one
            self._close()
        return self.parts[-1]

    def _any_parts(self, i: int) -> int:
        if self.dot:
            self.parts[-1] += r"(?![^.])"  # "a.**": "a", then a dot or the end
            self.dot = False
        if self.pattern.startswith(".", i + 2):
            self.parts[-1] += r"(?:.*\.|\A)"  # "**.a": "a", or anything then ".a"
            return i + 3
        self.parts[-1] += ".*"
        return i + 2

    def _one(self, c: str) -> None:
        self._flush_dot()
        if c == ".":
            self.dot = True
        elif c == "*":
            self.parts[-1] += r"[^.]*"
        elif c == "{":
            self.stack.append([])
            self.parts.append("")
        elif c == "}" and self.stack:
            self._close()
        elif c == "," and self.stack:
            self.stack[-1].append(self.parts.pop())
            self.parts.append("")
        else:
            self.parts[-1] += re.escape(c)

    def _flush_dot(self) -> None:
        if self.dot:
            self.parts[-1] += r"\."
            self.dot = False

    def _close(self) -> None:
        self._flush_dot()
        self.stack[-1].append(self.parts.pop())
        self.parts[-1] += "(?:" + "|".join(f"(?:{alternative})" for alternative in self.stack.pop()) + ")"


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is well formed, else ValueError saying why (fluentd reads the malformed ones each its own
    way: an unclosed brace as literal text, a trailing dot dropped, an unclosed /regex/ refused).

    >>> check_pattern("{ai.*,ml}.**")
    '{ai.*,ml}.**'
    >>> check_pattern("{ai.*")
    Traceback (most recent call last):
    ValueError: tag pattern '{ai.*': a brace is not closed
    """
    problem = None
    if pattern.startswith("/") and (len(pattern) < 2 or not pattern.endswith("/")):
        problem = "a regular expression must end with /"
    elif pattern.startswith("/"):
        try:
            re.compile(pattern[1:-1])
        except re.error as exc:
            problem = f"not a regular expression: {exc}"
    elif pattern.endswith("\\") and not pattern.endswith("\\\\"):
        problem = "it ends with a lone backslash"
    elif pattern.endswith(".") or ".." in pattern or pattern.startswith("."):
        problem = "an empty tag part"
    else:
        depth = 0
        for c in re.sub(r"\\.", "", pattern):
            depth += (c == "{") - (c == "}")
            if depth < 0:
                problem = "a brace is closed that was not opened"
                break
        if depth > 0:
            problem = "a brace is not closed"
    if problem:
        raise ValueError(f"tag pattern {pattern!r}: {problem}")
    return pattern


def tag_matches(patterns: list[str], tag: str) -> bool:
    """Whether ``tag`` matches any of ``patterns``.

    >>> tag_matches(["ai.*"], "ai.interactions"), tag_matches(["ai.*"], "ai.x.y")
    (True, False)
    >>> tag_matches(["**"], "anything.at.all"), tag_matches(["ai.**"], "ai")
    (True, True)
    >>> tag_matches(["{ai,ml}.interactions"], "ml.interactions"), tag_matches(["ai.**"], "aix")
    (True, False)
    >>> pairs = [("{ai.*,ml}", "ai.chat"), ("a.{b,c.**}", "a.c.d"), ("**.chat", "chat"), ("**.chat", "x.y.chat"),
    ...          ("a.**.b", "a.b"), ("/ai[.](chat|tools)/", "ai.tools")]
    >>> [tag_matches([p], t) for p, t in pairs]
    [True, True, True, True, True, True]
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
