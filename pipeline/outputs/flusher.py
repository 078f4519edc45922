"""Flusher: one loop per output worker: dequeue → write → ack, or nack + backoff, or set aside.

Besides the :class:`~pipeline.outputs.base.Output` protocol, an output may offer two
attributes the flusher reports (read with defaults, so outputs without them need nothing):
``start_error`` (``str | None``: what its check at start found wrong) and
``rejected_records`` (``int``: records it refused one by one into the dead-letter store).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pipeline.buffer.chunk import Chunk
from pipeline.buffer.file_buffer import FileBuffer
from pipeline.clock import Clock
from pipeline.errors import RetryableError, UnrecoverableError
from pipeline.outputs.base import Output
from pipeline.outputs.retry import RetryState, exhausted, next_delay

log = logging.getLogger("logferry.flusher")


@dataclass
class OutputStats:
    """Counters of one output, for logs, status and metrics."""

    delivered_chunks: int = 0
    delivered_records: int = 0
    failed_attempts: int = 0
    chunk_retries: int = 0  # failed attempts followed by a retry (the others set the chunk aside)
    dead_chunks: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None


class Flusher:
    """Delivers one output's queued chunks with ``workers`` concurrent loops and shared backoff."""

    def __init__(self, name: str, output: Output, buffer: FileBuffer, clock: Clock) -> None:
        self.name = name
        self.output = output
        self.buffer = buffer
        self.config = buffer.config
        self.clock = clock
        self.stats = OutputStats()
        self.retries: dict[str, RetryState] = {}
        self.failing_since: float | None = None  # monotonic time of the first failure since a success
        self._resume_at = 0.0

    @property
    def rejected_records(self) -> int:
        """Records the output refused one by one (dead-lettered, the chunk delivered)."""
        return int(getattr(self.output, "rejected_records", 0))

    async def start(self) -> None:
        """Start the output; a failed check counts as a failure (status, health) until a delivery succeeds."""
        await self.output.start()
        problem = getattr(self.output, "start_error", None)
        if problem:
            self._record_error(f"start check failed: {problem}")

    async def run(self) -> None:
        """Run the workers until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for n in range(self.config.workers):
                tasks.create_task(self._worker(tasks, n), name=f"flush:{self.name}:{n}")

    async def _worker(self, tasks: asyncio.TaskGroup, n: int) -> None:
        settling: asyncio.Task[None] | None = None
        while True:
            await self._wait_backoff()
            if settling is not None and not self.buffer.queue:
                # Nothing to overlap with: settle first, so that this worker counts as idle when it
                # asks for a chunk and the committer hands it a held one (``on_flusher_idle``).
                await settling
                settling = None
            chunk = await self.buffer.dequeue()
            if not await self.attempt(chunk):
                continue
            # The delivered chunk is deleted while the next queued one is written: the delete and
            # the two hops through the event loop around it would otherwise idle the output during a
            # backlog. One delete at a time per worker, in order.
            if settling is not None:
                await settling
            settling = tasks.create_task(self.settle(chunk), name=f"settle:{self.name}:{n}")

    async def _wait_backoff(self) -> None:
        # Another worker may push the resume time further while this one sleeps.
        while True:
            delay = self._resume_at - self.clock.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    async def deliver(self, chunk: Chunk) -> None:
        """Try one chunk once and settle it: ack, nack with backoff, or set aside."""
        if await self.attempt(chunk):
            await self.settle(chunk)

    async def attempt(self, chunk: Chunk) -> bool:
        """Write one chunk once; True if it was delivered (then ``settle`` it), else it is nacked or set aside."""
        try:
            await self.output.write(chunk)
        except RetryableError as exc:
            self._failed(chunk, exc)
        except UnrecoverableError as exc:
            self._set_aside(chunk, self._state(chunk), f"unrecoverable: {exc}")
        except Exception as exc:  # an output bug must not stop the other chunks; logged with traceback
            log.exception("output raised an unexpected error output=%s chunk=%s", self.name, chunk.name)
            self._failed(chunk, exc)
        else:
            return True
        return False

    async def settle(self, chunk: Chunk) -> None:
        """Delete a delivered chunk and count it."""
        # Unlinking megabytes frees their blocks (ext4: milliseconds): in a worker thread, off
        # the event loop, which parses.
        await asyncio.to_thread(chunk.delete)
        self._delivered(chunk)

    def _delivered(self, chunk: Chunk) -> None:
        self.buffer.ack(chunk)
        self.retries.pop(chunk.chunk_id, None)
        self.stats.delivered_chunks += 1
        self.stats.delivered_records += chunk.records
        self.stats.last_success = self.clock.time()
        self.failing_since = None

    def _state(self, chunk: Chunk) -> RetryState:
        return self.retries.setdefault(chunk.chunk_id, RetryState(first_failure=self.clock.monotonic()))

    def _failed(self, chunk: Chunk, exc: Exception) -> None:
        state = self._state(chunk)
        state.attempts += 1
        state.last_error = f"{type(exc).__name__}: {exc}"
        self.stats.failed_attempts += 1
        self._record_error(state.last_error)
        if exhausted(self.config, state, self.clock.monotonic()):
            self._set_aside(chunk, state, f"retries exhausted after {state.attempts} attempts: {state.last_error}")
            return
        self.stats.chunk_retries += 1
        delay = next_delay(self.config, state.attempts)
        self._resume_at = max(self._resume_at, self.clock.monotonic() + delay)
        log.warning(
            "delivery failed output=%s chunk=%s attempt=%d retry_in=%.1fs error=%r",
            self.name, chunk.name, state.attempts, delay, state.last_error,
        )
        self.buffer.nack(chunk)

    def _record_error(self, error: str) -> None:
        """The output is failing from now on (if not already) until a chunk is delivered."""
        if self.failing_since is None:
            self.failing_since = self.clock.monotonic()
        self.stats.last_error, self.stats.last_error_time = error, self.clock.time()

    def _set_aside(self, chunk: Chunk, state: RetryState, reason: str) -> None:
        error = {
            "output": self.name, "chunk_id": chunk.chunk_id, "timekey": chunk.timekey, "records": chunk.records,
            "attempts": state.attempts, "error": reason,
            "set_aside_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.time())),
        }
        path = self.buffer.set_aside(chunk, error)
        self.retries.pop(chunk.chunk_id, None)
        self.stats.dead_chunks += 1
        self.stats.last_error, self.stats.last_error_time = reason, self.clock.time()
        log.error(
            "chunk set aside output=%s chunk=%s records=%d path=%s reason=%r (replay: logferry replay %s)",
            self.name, chunk.name, chunk.records, path, reason, self.name,
        )
