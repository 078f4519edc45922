"""The contract between the flusher and an output.

An output receives whole chunks (:class:`~pipeline.buffer.chunk.Chunk`), reads them frame
by frame, and either returns (delivered: the chunk is deleted) or raises
:class:`~pipeline.errors.RetryableError` (back to the queue, retried with backoff) or
:class:`~pipeline.errors.UnrecoverableError` (set aside in ``dead/``).

Delivery must be idempotent per chunk: the same chunk can be written again after a
crash or a timeout. Outputs get a stable ``chunk.chunk_id`` for that (object keys),
plus each record's source identity in the frame meta (document ids). Records an
output rejects one by one (a mapping conflict) go to ``context.dead_letters`` and do
not fail the chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.buffer.chunk import Chunk
from pipeline.clock import Clock
from pipeline.config import EnrichConfig
from pipeline.deadletter import DeadLetterStore


@dataclass(frozen=True)
class OutputContext:
    """What an output may use besides its own config."""

    name: str
    state_dir: Path  # the output's own directory, for journals
    dead_letters: DeadLetterStore
    clock: Clock
    hostname: str
    enrich: EnrichConfig = field(default_factory=EnrichConfig)  # the fields every record gets (index templates)
    # The transforms its records went through, applied to a dead-letter entry it writes (a redact
    # chain masks the server's reason too: it may quote the document).
    dead_letter: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda entry: entry)


class Output(Protocol):
    """Delivers chunks to one destination."""

    async def start(self) -> None:
        """Connect and check the destination; log a clear error (do not raise) if it is unreachable."""
        ...

    async def write(self, chunk: Chunk) -> None:
        """Deliver every record of ``chunk``, idempotently; raise RetryableError/UnrecoverableError."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
