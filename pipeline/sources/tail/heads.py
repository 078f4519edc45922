"""The fingerprint of a file's first bytes: the tail source's, the importer's and the copy guard's helper
process's. A module of its own so the helper imports nothing else of the tail source (its memory)."""

from __future__ import annotations

import os

# hashlib's blake2b is this very type; importing hashlib also loads OpenSSL (3.5 MB of the helper's RSS).
from _blake2 import blake2b

FP_BYTES = 1024  # a file's first bytes that tell it apart (fewer while it is shorter)


def fingerprint(fd: int, length: int) -> tuple[str, int]:
    """Hash of the first ``length`` bytes (fewer if the file is shorter), and how many were hashed."""
    head = os.pread(fd, length, 0)
    return head_digest(head), len(head)


def head_digest(head: bytes | bytearray) -> str:
    """The fingerprint hash of a file's first bytes."""
    return blake2b(head, digest_size=8).hexdigest()
