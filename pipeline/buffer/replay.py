"""Replay: an operator puts set-aside chunks back in the queue after fixing the cause."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.buffer.chunk import Chunk, ChunkState


def replay_dead_chunks(buffer_dir: Path) -> int:
    """Move every chunk in ``buffer_dir/dead`` back to ``buffer_dir`` as queued; returns how many.

    Run it while the daemon is stopped (it reads the buffer directory at start). The
    error files stay in ``dead/`` renamed ``*.replayed`` as a record of what happened.
    """
    dead = buffer_dir / "dead"
    if not dead.is_dir():
        return 0
    moved = 0
    for path in sorted(dead.iterdir()):
        parsed = Chunk.parse_name(path)
        if parsed is None:
            continue
        timekey, chunk_id, _state = parsed
        os.replace(path, buffer_dir / f"{timekey}.{chunk_id}.{ChunkState.QUEUED.value}")
        error = dead / f"{path.name}.error.json"
        if error.exists():
            os.replace(error, dead / f"{path.name}.error.json.replayed")
        moved += 1
    return moved
