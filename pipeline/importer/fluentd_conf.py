"""Fluentd's configuration syntax, read into a tree of directives that remember their file and lines.

Both syntaxes share this grammar (v0.12 differs in parameter names, which the translator
handles): ``<name argument>`` opens a directive, ``</name>`` closes it, ``key value`` sets a
parameter, ``#`` starts a comment, and ``@include PATTERN`` (at any depth) splices in the
files a path, relative to the including file, or glob names, in name order (as Fluentd does).
Values may be double-quoted (escapes, and ``"#{...}"`` Ruby that Fluentd evaluates once at
load time), single-quoted (literal), or bare; a bare value opening ``[`` or ``{`` continues
until its brackets balance (v1's multi-line arrays and hashes).

>>> root = parse_text('<source>\\n  @type tail\\n  path "/var/log/*.log" # the agent\\n</source>\\n', "t.conf")
>>> source = root.children[0]
>>> source.name, source.where, source.param("path").value, source.param("path").where
('source', 't.conf:1-4', '/var/log/*.log', 't.conf:3')
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError

_OPEN = re.compile(r"^<\s*([A-Za-z0-9_@]+)\s*(.*?)\s*>$")
_CLOSE = re.compile(r"^</\s*([A-Za-z0-9_@]+)\s*>$")
_ENV = re.compile(r"""#\{\s*ENV(?:\[|\.fetch\(\s*)['"]([A-Za-z_][A-Za-z0-9_]*)['"]""")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "0": "\0", "f": "\f", "b": "\b", "e": "\x1b"}


@dataclass
class Param:
    """One ``key value`` line."""

    key: str
    value: str
    file: str
    line: int
    quoted: str = ""  # '"' or "'" when the value was quoted: Ruby ``#{}`` runs only in '"'

    @property
    def where(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}"

    @property
    def ruby(self) -> bool:
        """Whether Fluentd evaluates embedded Ruby (``"#{...}"``) in this value."""
        return self.quoted == '"' and "#{" in self.value

    @property
    def env(self) -> str | None:
        """The environment variable a ``"#{ENV['X']}"`` value reads, if it is one.

        >>> Param("password", "#{ENV['ES_PASSWORD']}", "f", 1, '"').env
        'ES_PASSWORD'
        """
        found = _ENV.search(self.value) if self.ruby else None
        return found.group(1) if found else None


@dataclass
class Directive:
    """``<name arg> ... </name>``: its parameters in order, nested directives, and where it was written."""

    name: str
    arg: str
    file: str
    first_line: int
    last_line: int = 0
    params: list[Param] = field(default_factory=list)
    children: list[Directive] = field(default_factory=list)

    @property
    def where(self) -> str:
        """``file:first-last``."""
        return f"{self.file}:{self.first_line}-{self.last_line}"

    @property
    def heading(self) -> str:
        """How it opens, e.g. ``<match ai.**>``."""
        return f"<{self.name} {self.arg}>" if self.arg else f"<{self.name}>"

    def param(self, *keys: str) -> Param | None:
        """The last parameter named one of ``keys`` (Fluentd: a later line wins)."""
        found = [p for p in self.params if p.key in keys]
        return found[-1] if found else None

    def value(self, *keys: str, default: str | None = None) -> str | None:
        """The value of :meth:`param`, or ``default``."""
        found = self.param(*keys)
        return found.value if found is not None else default

    def sections(self, *names: str) -> list[Directive]:
        """Nested directives with one of ``names``."""
        return [c for c in self.children if c.name in names]

    @property
    def type(self) -> str:
        """The plugin type: ``@type`` (v1) or ``type`` (v0.12); empty if none."""
        return self.value("@type", "type", default="") or ""


def parse_file(path: Path) -> Directive:
    """Parse a Fluentd config file and everything it ``@include``s; ConfigError names file and line."""
    root = Directive("ROOT", "", str(path), 1)
    _Parser().parse_into(root, path, [root], set())
    return root


def parse_text(text: str, name: str, base: Path | None = None) -> Directive:
    """Parse config text (``@include`` relative to ``base``)."""
    root = Directive("ROOT", "", name, 1)
    _Parser().feed(root, text.splitlines(), name, base or Path.cwd(), [root], set())
    return root


class _Parser:
    """A line-oriented reader with a stack of open directives that spans included files."""

    def parse_into(self, root: Directive, path: Path, stack: list[Directive], seen: set[Path]) -> None:
        """Read ``path`` into the open directive on top of ``stack``; ``seen``: the files including it."""
        resolved = path.resolve()
        if resolved in seen:
            raise ConfigError(f"{path}: included from itself (an @include loop)")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        self.feed(root, text.splitlines(), str(path), path.parent, stack, seen | {resolved})

    def feed(self, root: Directive, lines: list[str], name: str, base: Path, stack: list[Directive],
             seen: set[Path]) -> None:
        """Parse ``lines`` of file ``name``; each directive it opens must close in the same file."""
        depth = len(stack)
        index = 0
        while index < len(lines):
            number = index + 1
            line = lines[index].strip()
            index += 1
            if not line or line.startswith("#"):
                continue
            if line.startswith("@include ") or line.startswith("include "):
                self._include(root, line.split(None, 1)[1].strip().strip("\"'"), base, stack, seen, name, number)
            elif match := _CLOSE.match(line):
                self._close(match.group(1), stack, depth, name, number)
            elif match := _OPEN.match(line):
                opened = Directive(match.group(1), match.group(2), name, number)
                stack[-1].children.append(opened)
                stack.append(opened)
            else:
                index = self._param(line, lines, index, name, number, stack[-1])
        if len(stack) != depth:
            raise ConfigError(f"{name}:{stack[-1].first_line}: {stack[-1].heading} is never closed")

    def _include(self, root: Directive, pattern: str, base: Path, stack: list[Directive], seen: set[Path],
                 name: str, number: int) -> None:
        if pattern.startswith(("http://", "https://")):
            raise ConfigError(f"{name}:{number}: @include of a URL ({pattern}): download it and include the file")
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        if not matches and not glob.has_magic(full):
            raise ConfigError(f"{name}:{number}: @include {pattern}: no such file")
        for included in matches:
            self.parse_into(root, Path(included), stack, seen)

    @staticmethod
    def _close(closing: str, stack: list[Directive], depth: int, name: str, number: int) -> None:
        if len(stack) <= depth:
            raise ConfigError(f"{name}:{number}: </{closing}> closes nothing")
        opened = stack.pop()
        if opened.name != closing:
            raise ConfigError(f"{name}:{number}: </{closing}> closes {opened.heading} of line {opened.first_line}")
        opened.last_line = number

    @staticmethod
    def _param(line: str, lines: list[str], index: int, name: str, number: int, owner: Directive) -> int:
        key, _, rest = line.partition(" ") if " " in line else line.partition("\t")
        rest = rest.strip()
        while rest[:1] in ("[", "{") and not _balanced(rest) and index < len(lines):
            rest += lines[index].strip()
            index += 1
        value, quoted = _value(rest, name, number)
        owner.params.append(Param(key.strip(), value, name, number, quoted))
        return index


def _value(raw: str, name: str, number: int) -> tuple[str, str]:
    """A parameter's value without quotes and trailing comment, and which quote it had.

    >>> _value('"a\\\\tb" # c', "f", 1), _value("'#{x}'", "f", 1), _value("60s # flush", "f", 1)
    (('a\\tb', '"'), ('#{x}', "'"), ('60s', ''))
    """
    if raw.startswith('"'):
        return _double_quoted(raw, name, number), '"'
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0:
            raise ConfigError(f"{name}:{number}: unterminated single-quoted value")
        return raw[1:end], "'"
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip(), ""


def _double_quoted(raw: str, name: str, number: int) -> str:
    """The content of a double-quoted value; ``#{...}`` is kept whole, quotes inside it included.

    >>> _double_quoted('"#{ENV["ES_PASSWORD"]}" # c', "f", 1)
    '#{ENV["ES_PASSWORD"]}'
    """
    out: list[str] = []
    i = 1
    while i < len(raw):
        char = raw[i]
        if raw.startswith("#{", i):
            end = _ruby_end(raw, i + 2)
            out.append(raw[i:end])
            i = end
            continue
        if char == "\\" and i + 1 < len(raw):
            out.append(_ESCAPES.get(raw[i + 1], raw[i + 1]))
            i += 2
            continue
        if char == '"':
            return "".join(out)
        out.append(char)
        i += 1
    raise ConfigError(f"{name}:{number}: unterminated double-quoted value")


def _ruby_end(raw: str, start: int) -> int:
    """Index just past the ``}`` closing a ``#{`` whose body starts at ``start`` (or the end)."""
    depth = 1
    for index in range(start, len(raw)):
        depth += {"{": 1, "}": -1}.get(raw[index], 0)
        if depth == 0:
            return index + 1
    return len(raw)


def _balanced(text: str) -> bool:
    return text.count("[") + text.count("{") <= text.count("]") + text.count("}")
