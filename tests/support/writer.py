"""A writer thread that plays the AI agent: generated records at a steady pace, with a ledger."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pipeline import generator


class AgentWriter(threading.Thread):
    """Writes ``count`` records to ``path`` in small batches.

    ``reopen`` opens the path for every batch (how a ``create``-mode logrotate client,
    e.g. WatchedFileHandler, follows rotation); otherwise one O_APPEND descriptor is kept
    (how a program that expects ``copytruncate`` behaves).
    """

    def __init__(self, path: Path, count: int, per_batch: int = 10, pause: float = 0.002, reopen: bool = True,
                 start: int = 0, max_chars: int = 400) -> None:
        super().__init__(daemon=True)
        self.path, self.count, self.per_batch, self.pause, self.reopen = path, count, per_batch, pause, reopen
        self.lines = list(generator.lines(count, start=start, max_chars=max_chars))
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = -1
            for n in range(0, len(self.lines), self.per_batch):
                if fd < 0 or self.reopen:
                    if fd >= 0:
                        os.close(fd)
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(fd, b"".join(self.lines[n : n + self.per_batch]))
                self.written = min(n + self.per_batch, len(self.lines))
                time.sleep(self.pause)
            os.close(fd)
        except BaseException as exc:  # reported by the test through .error
            self.error = exc
            raise
