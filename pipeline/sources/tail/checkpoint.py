"""The position store: how far each followed file has been committed, in ``positions.json``.

A position is saved only after the lines before it are durable in every routed
output's buffer (see :mod:`pipeline.buffer`), and the file is replaced atomically
(temp file, fsync, rename, fsync of the directory). It also holds the last *commit
sequence number*, which lets each buffer roll back frames written by a commit whose
positions never reached the disk.

Policy for a damaged store: the file is moved aside to ``positions.json.corrupt-<time>``
and logged; positions are then rebuilt from the frames still in the buffers (their
batch ends), and files found in no frame are read again from their head (at-least-once
for that case: Elasticsearch's deterministic ids absorb it; other outputs may see
duplicates, and the log says so).
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.durability import write_atomic

log = logging.getLogger("logferry.positions")
VERSION = 1


@dataclass(frozen=True, slots=True)
class FilePosition:
    """The committed read position of one file for one source."""

    source: str
    key: str  # "<dev>:<inode>"
    path: str
    offset: int
    fingerprint: str  # hash of the first fp_len bytes: tells a reused inode from the same file
    fp_len: int
    # After a truncate in place (copytruncate): the old content's fingerprint and how far it
    # was read. Its copy may be found only at the next start (the daemon was killed before a
    # look found it): it is read from there, neither again from its head nor skipped.
    copy_fp: str = ""
    copy_fp_len: int = 0
    copy_offset: int = 0
    # A Kafka partition's: the token of the assignment that stored up to here, and where it began
    # (see pipeline.sources.kafka.ownership). "" for a file, and for positions saved before it existed.
    owner: str = ""
    owner_start: int = 0


class PositionStore:
    """Committed positions, keyed by (source, file key), plus the last commit sequence number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.commit_seq = 0
        self.entries: dict[tuple[str, str], FilePosition] = {}
        self.existed = False
        self.corrupt = False

    def load(self) -> None:
        """Read the store; a missing file is a first start, a damaged one is set aside (see module doc)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        self.existed = True
        try:
            self._decode(raw)
        except (ValueError, KeyError, TypeError) as exc:
            self._set_aside(exc)

    def _decode(self, raw: bytes) -> None:
        doc = orjson.loads(raw)
        files = doc["files"]
        if doc["version"] != VERSION or doc["crc"] != _crc(files):
            raise ValueError("version or checksum mismatch")
        self.commit_seq = int(doc["commit_seq"])
        for item in files:
            pos = FilePosition(**item)
            self.entries[(pos.source, pos.key)] = pos

    def _set_aside(self, exc: Exception) -> None:
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        self.path.replace(target)
        self.corrupt = True
        self.entries.clear()
        log.error(
            "position store damaged (%s): moved to %s; rebuilding positions from the buffers, "
            "files not found there are read again from their head", exc, target,
        )

    def get(self, source: str, key: str) -> FilePosition | None:
        """The committed position of a file, if any."""
        return self.entries.get((source, key))

    def for_source(self, source: str) -> list[FilePosition]:
        """Every committed position of one source."""
        return [p for (s, _), p in self.entries.items() if s == source]

    def encode(self, seq: int, updates: dict[tuple[str, str], FilePosition | None]) -> bytes:
        """The store's bytes as they will be after a commit applying ``updates`` (None = forget)."""
        merged = dict(self.entries)
        for key, pos in updates.items():
            if pos is None:
                merged.pop(key, None)
            else:
                merged[key] = pos
        files = [_as_dict(p) for p in merged.values()]
        return orjson.dumps({"version": VERSION, "commit_seq": seq, "crc": _crc(files), "files": files})

    def save(self, data: bytes) -> None:
        """Write encoded bytes atomically (worker thread)."""
        write_atomic(self.path, data)

    def save_now(self, updates: dict[tuple[str, str], FilePosition | None]) -> None:
        """Apply ``updates`` and write the store at once, outside any commit (blocking).

        For positions that cover no data, such as where a first start begins: the commit
        sequence number stays as it is, so the buffers' roll-back is unaffected.
        """
        self.save(self.encode(self.commit_seq, updates))
        self.applied(self.commit_seq, updates)
        self.existed = True

    def applied(self, seq: int, updates: dict[tuple[str, str], FilePosition | None]) -> None:
        """Record in memory that a commit's positions reached the disk."""
        self.commit_seq = seq
        for key, pos in updates.items():
            if pos is None:
                self.entries.pop(key, None)
            else:
                self.entries[key] = pos


def _as_dict(pos: FilePosition) -> dict[str, Any]:
    item: dict[str, Any] = {
        "source": pos.source, "key": pos.key, "path": pos.path, "offset": pos.offset,
        "fingerprint": pos.fingerprint, "fp_len": pos.fp_len,
    }
    if pos.copy_fp_len:  # only for a file truncated in place: the store of every other file is as it was
        item.update(copy_fp=pos.copy_fp, copy_fp_len=pos.copy_fp_len, copy_offset=pos.copy_offset)
    if pos.owner:
        item.update(owner=pos.owner, owner_start=pos.owner_start)
    return item


def _crc(files: list[dict[str, Any]]) -> int:
    return zlib.crc32(orjson.dumps(files, option=orjson.OPT_SORT_KEYS))
