"""Object keys: one per chunk, a pure function of the chunk's time key and id.

The key is ``strftime(path, gmtime(timekey))`` followed by an object name; by default::

    {path}{hostname}-{time}-{chunk_id}.{ext}

so a chunk of the window 2026-11-18 11:00 UTC under ``path = "interactions/%Y/%m/%d/"``
goes to ``interactions/2026/11/18/web-1-20261118T110000Z-3f2a9c0d1e4b5a69.jsonl.gz``.
A chunk's id never changes (see :mod:`pipeline.buffer`), so a retried or replayed
upload overwrites its own object and never another chunk's.

Placeholders of ``object_key_format``: ``{path}`` (the strftime'd prefix), ``{hostname}``,
``{time}`` (``%Y%m%dT%H%M%SZ`` of the time key), ``{timekey}`` (epoch seconds),
``{chunk_id}`` (required) and ``{ext}`` (from ``store_as``).
"""

from __future__ import annotations

import string
import time
from dataclasses import dataclass

DEFAULT_OBJECT_KEY_FORMAT = "{path}{hostname}-{time}-{chunk_id}.{ext}"
PLACEHOLDERS = frozenset({"path", "hostname", "time", "timekey", "chunk_id", "ext"})
EXTENSIONS = {"json": "jsonl", "gzip": "jsonl.gz", "zstd": "jsonl.zst"}


def check_object_key_format(fmt: str) -> None:
    """Raise ValueError unless ``fmt`` uses known placeholders only and includes ``{chunk_id}``.

    >>> check_object_key_format(DEFAULT_OBJECT_KEY_FORMAT)
    >>> check_object_key_format("{path}{hostname}.{ext}")
    Traceback (most recent call last):
    ...
    ValueError: must contain {chunk_id}, or chunks of one window would overwrite each other
    >>> check_object_key_format("{path}{host}-{chunk_id}")
    Traceback (most recent call last):
    ...
    ValueError: unknown placeholder {host}; known: {chunk_id} {ext} {hostname} {path} {time} {timekey}
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as exc:  # unbalanced braces
        raise ValueError(f"invalid format: {exc}") from exc
    for name in fields:
        if name not in PLACEHOLDERS:
            known = " ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{name}}}; known: {known}")
    if "chunk_id" not in fields:
        raise ValueError("must contain {chunk_id}, or chunks of one window would overwrite each other")


@dataclass(frozen=True)
class KeyBuilder:
    """Builds object keys for one output."""

    path: str
    hostname: str
    store_as: str
    fmt: str = DEFAULT_OBJECT_KEY_FORMAT

    @property
    def ext(self) -> str:
        """The file extension of ``store_as``."""
        return EXTENSIONS[self.store_as]

    def prefix(self, timekey: int) -> str:
        """The strftime'd key prefix of a time window.

        >>> KeyBuilder("interactions/%Y/%m/%d/", "web-1", "gzip").prefix(1_794_999_600)
        'interactions/2026/11/18/'
        """
        return time.strftime(self.path, time.gmtime(timekey)) if self.path else ""

    def key(self, timekey: int, chunk_id: str) -> str:
        """The object key of one chunk.

        >>> KeyBuilder("interactions/%Y/%m/%d/", "web-1", "gzip").key(1_794_999_600, "3f2a9c0d1e4b5a69")
        'interactions/2026/11/18/web-1-20261118T110000Z-3f2a9c0d1e4b5a69.jsonl.gz'
        """
        return self.fmt.format(
            path=self.prefix(timekey),
            hostname=self.hostname.replace("/", "_"),
            time=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(timekey)),
            timekey=timekey,
            chunk_id=chunk_id,
            ext=self.ext,
        )
