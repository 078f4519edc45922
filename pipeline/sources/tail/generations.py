"""Rotated generations: is an unseen sibling a new generation, or a copy of a file we know?

A saved position records a file's inode and a fingerprint of its first bytes. A sibling
that starts with those bytes under another inode is a copy (copytruncate's): if the
original was truncated since, the copy holds the rest of what was committed there, from
the saved offset on; if not, the copy holds nothing the original does not. Any other
sibling is a generation of its own, read from its head.
"""

from __future__ import annotations

import os

from pipeline.sources.tail.checkpoint import FilePosition
from pipeline.sources.tail.discovery import FoundFile, compressed_head
from pipeline.sources.tail.heads import fingerprint, head_digest

MTIME_SLACK = 1.0  # seconds: a file system's mtime granularity, and a write racing the last save


def replaced(pos: FilePosition, found: FoundFile | None) -> bool:
    """Whether a saved position's file is gone, shorter than the position, or starts with other bytes."""
    return found is None or found.size < pos.offset or not same_start(found.path, pos)


def copy_offset(found: FoundFile, before: dict[str, FilePosition], truncated: dict[str, FilePosition]) -> int | None:
    """Where to start reading an unseen sibling: 0 for a new generation, a saved offset for
    copytruncate's copy of a file truncated since (or of a truncate the daemon saw but whose
    copy it had not found yet: ``FilePosition.copy_*``), None for a copy of a file that goes on."""
    found_heads = head_fingerprints(found.path, lengths_of(before))
    for key, pos in before.items():
        if pos.fp_len and found_heads.get(pos.fp_len) == pos.fingerprint:
            if key not in truncated:
                return None
            del truncated[key]  # one copy per truncate
            return min(pos.offset, found.size)
    for pos in before.values():
        if pos.copy_fp_len and found_heads.get(pos.copy_fp_len) == pos.copy_fp:
            return min(pos.copy_offset, found.size)
    return 0


def lengths_of(positions: dict[str, FilePosition]) -> set[int]:
    """The fingerprint lengths a sibling's head is compared at: each saved position's, and its copy's."""
    return {n for pos in positions.values() for n in (pos.fp_len, pos.copy_fp_len) if n}


def same_start(path: str, pos: FilePosition) -> bool:
    """Whether the file at ``path`` still starts with the bytes ``pos`` was fingerprinted on."""
    return pos.fp_len == 0 or head_fingerprints(path, {pos.fp_len}).get(pos.fp_len) == pos.fingerprint


def head_fingerprints(path: str, lengths: set[int]) -> dict[int, str]:
    """Fingerprints of a file's first ``n`` bytes for each n (only of files at least that long)."""
    heads: dict[int, str] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return heads
    try:
        for n in lengths:
            fp, got = fingerprint(fd, n)
            if got == n:
                heads[n] = fp
    finally:
        os.close(fd)
    return heads


def read_before_compressed(path: str, before: dict[str, FilePosition]) -> bool:
    """Whether a compressed sibling starts like a file a saved position was taken on (read before)."""
    for length in {pos.fp_len for pos in before.values() if pos.fp_len}:
        head = compressed_head(path, length)
        if head is not None and any(p.fp_len == length and p.fingerprint == head_digest(head) for p in before.values()):
            return True
    return False
