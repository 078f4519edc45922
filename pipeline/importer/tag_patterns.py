"""Set relations between Fluentd tag patterns: do two overlap, does one cover another.

A source that keeps its clients' tags (forward) has no tag known in advance, so the
import cannot route sample tags: it reasons on the patterns themselves. Each pattern is
read as a small automaton with the meaning :func:`pipeline.runtime.routing.tag_matches`
gives it (``*`` one tag part, ``**`` any number, ``a.**`` also ``a``, ``{a,b}`` either),
and the questions are answered exactly by exploring the product of automata.

>>> overlaps(["ai.**"], ["ai.debug"]), overlaps(["ai.*"], ["batch.**"])
(True, False)
>>> covered([["ai.debug"]], ["ai.**"]), covered([["ai.**"]], ["ai.debug"]), covered([["**"], ["x.*"]], ["x.{a,*}"])
(True, False, True)
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from dataclasses import dataclass

_BRACES = re.compile(r"\{([^{}]*)\}")
_OTHER = "\x00"  # stands for every character no pattern names (never a dot)
State = tuple[int, int, int]  # (alternative, position, inside the ``(\..*)?`` of ``.**``)


@dataclass(frozen=True)
class _Pattern:
    """One brace-free pattern as tokens: a character, ``*``, ``**`` or ``.**``."""

    tokens: tuple[str, ...]


def _expand(pattern: str) -> list[str]:
    """``{a,b}`` alternatives spelled out: ``x.{a,b}`` → ``x.a``, ``x.b``."""
    parts = _BRACES.split(pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _tokens(pattern: str) -> _Pattern:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            if out and out[-1] == ".":
                out[-1] = ".**"
            else:
                out.append("**")
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return _Pattern(tuple(out))


class Language:
    """The tags matched by any of some patterns (an automaton, explored lazily)."""

    def __init__(self, patterns: list[str]) -> None:
        self.alternatives = [_tokens(p) for raw in patterns for p in _expand(raw)]

    def chars(self) -> set[str]:
        """Characters the patterns name literally."""
        return {t for alt in self.alternatives for t in alt.tokens if len(t) == 1 and t != "*"}

    def start(self) -> frozenset[State]:
        """The states before the first character."""
        return self._closure({(a, 0, 0) for a in range(len(self.alternatives))})

    def accepts(self, states: frozenset[State]) -> bool:
        """Whether a tag ending in ``states`` matches."""
        return any(pos == len(self.alternatives[a].tokens) for a, pos, _ in states)

    def step(self, states: frozenset[State], char: str) -> frozenset[State]:
        """The states after reading ``char``."""
        following: set[State] = set()
        for a, pos, inside in states:
            tokens = self.alternatives[a].tokens
            if pos == len(tokens):
                continue
            token = tokens[pos]
            if token == "**" or (token == ".**" and inside) or (token == "*" and char != "."):
                following.add((a, pos, inside))
            elif token == ".**" and char == ".":
                following.add((a, pos, 1))
            elif token == char:
                following.add((a, pos + 1, 0))
        return self._closure(following)

    def _closure(self, states: set[State]) -> frozenset[State]:
        done = set(states)
        for a, pos, _ in states:
            tokens = self.alternatives[a].tokens
            while pos < len(tokens) and tokens[pos] in ("*", "**", ".**"):
                pos += 1
                done.add((a, pos, 0))
        return frozenset(done)


def _witness(within: list[Language], outside: Language) -> bool:
    """Whether some tag is matched by every language of ``within`` and not by ``outside``."""
    alphabet = {".", _OTHER}.union(*(lang.chars() for lang in [*within, outside]))
    first = (tuple(lang.start() for lang in within), outside.start())
    seen, queue = {first}, deque([first])
    while queue:
        inner, out = queue.popleft()
        if all(lang.accepts(s) for lang, s in zip(within, inner, strict=True)) and not outside.accepts(out):
            return True
        for char in alphabet:
            moved = tuple(lang.step(s, char) for lang, s in zip(within, inner, strict=True))
            if any(not s for s in moved):
                continue
            state = (moved, outside.step(out, char))
            if state not in seen:
                seen.add(state)
                queue.append(state)
    return False


def overlaps(first: list[str], second: list[str]) -> bool:
    """Whether some tag matches a pattern of ``first`` and one of ``second``."""
    return _witness([Language(first), Language(second)], Language([]))


def covered(within: list[list[str]], by: list[str]) -> bool:
    """Whether every tag matching all of the pattern lists ``within`` matches one of ``by``."""
    return not _witness([Language(p) for p in within], Language(by))
