"""Finding files: glob matches, and the rotated siblings that sit beside them.

A *sibling* is a file in the same directory whose name extends a followed file's name
(``agent.log.1``, ``agent.log-20261127``, ``agent.log.backup``). Siblings are never
followed for new data; they are looked at only to finish a file that was rotated away
(by its saved inode) or that was created and rotated away between two looks.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from collections.abc import Iterable
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
    root = str(static_root(pattern))
    flat = pattern.replace("**/", "")
    seen: set[tuple[int, int]] = set()
    found = []
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
                        found.setdefault(file_key(st), FoundFile(entry.path, st.st_size, st.st_ctime))
        except OSError:
            continue
    return found


def is_sibling(path: str, names: set[str]) -> bool:
    """Whether ``path``'s name extends one of ``names`` the way rotation does, uncompressed.

    >>> is_sibling("/l/agent.log.1", {"agent.log"}), is_sibling("/l/agent.log.2.gz", {"agent.log"})
    (True, False)
    >>> is_sibling("/l/agent.log", {"agent.log"}), is_sibling("/l/other.log.1", {"agent.log"})
    (False, False)
    """
    name = os.path.basename(path)
    if name.lower().endswith(COMPRESSED):
        return False
    return any(name.startswith(base + sep) for base in names for sep in SEPARATORS)


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
    seen: set[tuple[int, int]] = set()
    found: set[str] = set()
    for directory, dirs, _ in os.walk(root, followlinks=True):
        try:
            st = os.stat(directory)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        found.add(directory)
    return found
