"""glibc malloc settings for a daemon that moves multi-megabyte buffers through worker threads.

Bulk bodies (``bulk_max_bytes``, 10 MiB by default) and chunk reads are built in worker threads
(``asyncio.to_thread``) and freed on the event loop. With glibc's defaults each thread may get
its own arena (up to eight per core), and the mmap threshold rises to the size of the largest
buffer freed, so later 10 MiB buffers come from those arenas' heaps instead of fresh mappings:
freed, they stay resident. Peak RSS with two Elasticsearch/OpenSearch workers measured ~20 MB
higher that way (benchmarks/outputs.py, see the README's Performance section).

Two arenas, and a fixed threshold of 4 MiB (above the tail source's 1 MiB reads, so the hot
read path keeps its heap allocations): a big buffer is a mapping of its own, returned to the
system when freed.

A fixed mmap threshold also fixes the trim threshold, at glibc's 128 KiB: each time the blocks of
a catch-up (1 MiB read, ~1.1 MiB of records out of a parse worker) were freed at the top of the
heap, it went back to the system, and the next blocks faulted it in again, page by page, on the
event loop. Trimming only beyond 32 MiB free keeps those pages: catch-up with ``fsync = false``
and two parse workers went from 1.19-1.23x to 1.33-1.39x the floor, at the same peak RSS
(docs/PERFORMANCE.md §4, "Heap trimming"). ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` in the environment win.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
M_ARENA_MAX = -8
M_TRIM_THRESHOLD = -1
ARENAS = 2
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024


def tune_malloc() -> list[str]:
    """Apply the settings above where glibc is the allocator; the names of those applied."""
    if not sys.platform.startswith("linux"):
        return []
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # musl has none
    if mallopt is None:
        return []
    applied = []
    for env, option, value in (("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENAS),
                               ("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                               ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if env not in os.environ and mallopt(option, value) == 1:
            applied.append(env)
    return applied
