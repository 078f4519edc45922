"""Tag routing, fluentd-style: ``*`` matches one tag part, ``**`` any number, ``{a,b}`` either."""

from __future__ import annotations

import re
from functools import lru_cache


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
