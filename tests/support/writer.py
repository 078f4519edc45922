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


class PacedWriter(threading.Thread):
    """Writes ``count`` records to ``path`` at ``rate`` lines/s, one ``write()`` per line, through one
    O_APPEND descriptor opened at construction (a program whose stdout is redirected to its log: it
    cannot reopen, so its logrotate must use copytruncate). ``marks`` lists ``written`` at each
    :meth:`mark` (the test's rotations), to count losses per rotation.
    """

    def __init__(self, path: Path, count: int, rate: float, max_chars: int = 400) -> None:
        super().__init__(daemon=True)
        self.count, self.rate = count, rate
        self.lines = list(generator.lines(count, max_chars=max_chars))
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.written = 0
        self.marks: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for n, line in enumerate(self.lines):
                pause = start + n / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                os.write(self.fd, line)
                self.written = n + 1
            os.close(self.fd)
        except BaseException as exc:  # reported by the test through .error
            self.error = exc
            raise

    def mark(self) -> None:
        """Note where the writer is (call right after a rotation)."""
        self.marks.append(self.written)


def lost_per_rotation(lost_seqs: list[int], marks: list[int]) -> list[int]:
    """How many lost sequence numbers fall before each mark and after the previous one.

    >>> lost_per_rotation([5, 6, 15, 40], [10, 20, 30])
    [2, 1, 0]
    """
    counts = [0] * len(marks)
    for seq in lost_seqs:
        for i, mark in enumerate(marks):
            if seq < mark:
                counts[i] += 1
                break
    return counts
