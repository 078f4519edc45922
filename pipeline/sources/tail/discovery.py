"""Finding files: glob matches, and the rotated siblings that sit beside them.

A *sibling* (a rotated generation) is a file in a followed file's directory, or in one
of the source's ``olddir`` directories, whose name matches one of the followed file's
sibling patterns: ``{name}.*``, ``{name}-*`` and ``{name}_*`` always (numbered
``agent.log.1``, dateext ``agent.log-20261202`` or ``agent.log-20261202-1796240763``,
any ``dateformat`` that starts with one of those separators), plus the source's
``rotated_names`` (``{stem}-*{suffix}`` for logrotate's ``extension``). Siblings are
never followed for new data; they are looked at only to finish a file that was rotated
away (by its saved inode), or that was created and rotated away between two looks or
while the daemon was stopped. Compressed ones (``.gz``, ``.xz``, ...) cannot be read:
they are reported.
"""

from __future__ import annotations

import bz2
import fnmatch
import glob
import gzip
import lzma
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.reader import file_key

COMPRESSED = (".gz", ".zst", ".bz2", ".xz", ".zip", ".lz4", ".z")
SEPARATORS = (".", "-", "_")


@dataclass(frozen=True, slots=True)
class FoundFile:
    """A regular file seen on disk."""

    path: str
    size: int
    ctime: float
    mtime: float


def static_root(pattern: str) -> Path:
    """The longest leading directory of a glob pattern without wildcards.

    >>> static_root("/var/log/ai-agent/*.log"), static_root("/srv/*/logs/**/*.log")
    (PosixPath('/var/log/ai-agent'), PosixPath('/srv'))
    """
    root: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        root.append(part)
    return Path(*root) if root else Path(".")


def expand(pattern: str) -> list[str]:
    """Paths matching a glob; ``**`` walks directories once each, however symlinks loop.

    (``glob.glob(recursive=True)`` follows directory symlinks without memory: two links
    to a parent make it walk 2**40 paths.)
    """
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    flat = pattern.replace("**/", "")
    found = []
    for directory, files in _walk_once(str(static_root(pattern))):
        for name in files:
            path = os.path.join(directory, name)
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, flat):
                found.append(path)
    return sorted(found)


def matched_files(config: TailSourceConfig) -> dict[str, str]:
    """Regular files matched by the globs and not excluded: file key → path."""
    found: dict[str, str] = {}
    for pattern in config.paths:
        for path in expand(pattern):
            if any(fnmatch.fnmatch(path, ex) for ex in config.exclude):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished, dangling link, or a symlink loop
            if stat.S_ISREG(st.st_mode):
                found.setdefault(file_key(st), path)
    return found


def list_directories(directories: set[str]) -> dict[str, FoundFile]:
    """Every regular file directly in ``directories``: file key → FoundFile."""
    found: dict[str, FoundFile] = {}
    for directory in sorted(directories):
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        found.setdefault(file_key(st), FoundFile(entry.path, st.st_size, st.st_ctime, st.st_mtime))
        except OSError:
            continue
    return found


DEFAULT_SIBLINGS = ("{name}.*", "{name}-*", "{name}_*")


def sibling_patterns(names: set[str], extra: Sequence[str] = ()) -> list[str]:
    """Name patterns of the rotated generations of files called ``names``.

    >>> sibling_patterns({"agent.log"}, ["{stem}-*{suffix}"])
    ['agent.log.*', 'agent.log-*', 'agent.log_*', 'agent-*.log']
    """
    patterns = []
    for name in sorted(names):
        stem, suffix = os.path.splitext(name)
        for pattern in (*DEFAULT_SIBLINGS, *extra):
            formatted = pattern.format(name=glob.escape(name), stem=glob.escape(stem), suffix=glob.escape(suffix))
            if formatted != name:
                patterns.append(formatted)
    return patterns


def is_compressed(path: str) -> bool:
    """Whether the name ends like a compressed file's.

    >>> is_compressed("/l/agent.log.2.gz"), is_compressed("/l/agent.log.2")
    (True, False)
    """
    return path.lower().endswith(COMPRESSED)


def is_sibling(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``path``'s name matches a sibling pattern (compressed or not: see :func:`is_compressed`).

    >>> patterns = sibling_patterns({"agent.log"})
    >>> is_sibling("/l/agent.log.1", patterns), is_sibling("/l/agent.log-20261202-1796240763", patterns)
    (True, True)
    >>> is_sibling("/l/agent.log", patterns), is_sibling("/l/other.log.1", patterns)
    (False, False)
    """
    name = os.path.basename(path)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def with_olddirs(directories: set[str], olddirs: Sequence[str]) -> set[str]:
    """``directories`` and the ``olddir`` directories of each (relative ones from it).

    >>> sorted(with_olddirs({"/var/log/a"}, ["old", "/srv/archive"]))
    ['/srv/archive', '/var/log/a', '/var/log/a/old']
    """
    return directories | {os.path.join(d, old) for d in directories for old in olddirs}


def directories_to_watch(config: TailSourceConfig, matched: Iterable[str]) -> set[str]:
    """The directories whose changes concern the globs: where matched files are and may appear.

    For a ``**`` pattern every directory under its static root (each once, however
    symlinks loop); for another, the directories its directory part matches now. New
    directories further up are found by the rescans.
    """
    found = {os.path.dirname(path) for path in matched}
    for pattern in config.paths:
        if "**" in pattern:
            found |= _walk_directories(str(static_root(pattern)))
        else:
            found |= {d for d in glob.glob(os.path.dirname(pattern) or ".") if os.path.isdir(d)}
    return found


def _walk_directories(root: str) -> set[str]:
    return {directory for directory, _ in _walk_once(root)}


def _walk_once(root: str) -> Iterator[tuple[str, list[str]]]:
    """(directory, file names) for each directory below ``root``, each visited once.

    Symlinks are followed, but a directory already seen (by device and inode) is not
    walked again, so links that loop back to a parent cannot make the walk explode.
    """
    seen: set[tuple[int, int]] = set()
    for directory, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(directory)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        yield directory, files


def compressed_head(path: str, length: int) -> bytes | None:
    """The first ``length`` uncompressed bytes of a gzip, bzip2 or xz file; None if it cannot tell."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".gz":
            with gzip.open(path, "rb") as gz:
                return gz.read(length)
        if ext == ".bz2":
            with bz2.open(path, "rb") as bz:
                return bz.read(length)
        if ext == ".xz":
            with lzma.open(path, "rb") as xz:
                return xz.read(length)
    except (OSError, EOFError, lzma.LZMAError):
        return None
    return None
