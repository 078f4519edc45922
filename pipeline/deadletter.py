"""The dead-letter store for records: lines that could not become records, with the reason.

``STATE_DIR/dead-letter/records-YYYYMMDD.jsonl`` holds one JSON object per bad line::

    {"id": "agent:2049:1234:5678", "time": "…Z", "source": "agent", "path": "/var/log/…",
     "offset": 5678, "reason": "invalid JSON: …", "line": "…"}   # or "line_base64" if not UTF-8

Lines longer than ``max_line_bytes`` are streamed to ``oversized/`` (their first
``max_line_bytes``; the entry gives the full length and offset) and the entry names that
blob instead of carrying the line. Entries are appended and fsynced in the
same commit as the positions that move past them, so a bad line is never skipped
without its entry. After a crash an entry may be written again: ``id`` (source, file,
offset) identifies repeats. Chunks an output could not deliver live in that output's
buffer directory under ``dead/`` instead (see :mod:`pipeline.buffer`).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from pipeline.durability import append_whole, make_dirs, open_file

log = logging.getLogger("logferry.deadletter")
Written = tuple[Path, int, int]  # a write's file, and where its entries start and end


def line_fields(line: bytes, limit: int = 1 << 20) -> dict[str, Any]:
    """The line as text when it is UTF-8, else as base64; cut to ``limit`` bytes (noted)."""
    fields: dict[str, Any] = {"length": len(line)}
    sample = line[:limit]
    try:
        fields["line"] = sample.decode("utf-8")
    except UnicodeDecodeError:
        fields["line_base64"] = base64.b64encode(sample).decode("ascii")
    if len(line) > limit:
        fields["truncated"] = True
    return fields


class DeadLetterStore:
    """Append-only files of bad lines, under ``STATE_DIR/dead-letter``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.oversized_dir = directory / "oversized"
        self.count = 0  # entries since start: the committer's as it queues them, outputs' as they write them
        self._pending: list[bytes] = []
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the directories."""
        make_dirs(self.oversized_dir)

    def blob_path(self, source: str, key: str, offset: int) -> Path:
        """Where an oversized line from (source, file, offset) is copied; the same name on replay."""
        return self.oversized_dir / f"{source}-{key.replace(':', '-')}-{offset}.line"

    def add(self, entry: dict[str, Any]) -> None:
        """Queue an entry for the next ``flush`` (called on the event loop)."""
        # A compact copy: orjson's result holds at least 4 KiB until the next commit.
        self._pending.append(bytes(memoryview(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))))
        self.count += 1

    def take_pending(self) -> list[bytes]:
        """Hand the queued entries to a commit."""
        pending, self._pending = self._pending, []
        return pending

    def write(self, entries: list[bytes]) -> Written | None:
        """Append and fsync entries (a worker thread: the committer's, or an output's); where they went, for
        :meth:`cut_back` should their commit fail."""
        if not entries:
            return None
        path = self.directory / time.strftime("records-%Y%m%d.jsonl", time.gmtime())
        with self._lock:  # writers of several threads: each one's entries whole, and where it knows
            fd = open_file(path, os.O_WRONLY | os.O_APPEND)
            try:
                start = os.fstat(fd).st_size
                # No torn or partial entries left for the retry to write again.
                append_whole(fd, entries, lambda exc: log.warning(
                    "cannot cut %s back after a failed write (%s): part of an entry stays", path, exc))
            finally:
                os.close(fd)
        return path, start, start + sum(map(len, entries))

    def cut_back(self, written: Written) -> None:
        """Take back what a ``write`` appended (its commit failed: the retry writes the entries again), unless
        another writer appended since: its entries are not ours to cut, and ours then appear twice."""
        path, start, end = written
        with self._lock:
            try:
                if os.stat(path).st_size != end:
                    log.info("dead letters of a failed commit kept in %s (others were written since): they "
                             "appear twice", path)
                    return
                os.truncate(path, start)
            except OSError as exc:
                log.warning("cannot cut back %s after a failed commit (%s): its dead letters appear twice", path, exc)
