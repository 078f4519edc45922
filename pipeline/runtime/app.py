"""run(settings): build → start → wait for a stop → stop in order, within a deadline.

Task ownership: one TaskGroup owns every task (sources, processor, committer,
flushers). Stop order: sources first; the processor and committer finish what was
read and commit it; with ``flush_at_shutdown`` staged chunks are enqueued and the
flushers get until the deadline to deliver them; then everything left is cancelled.
Nothing is lost by cancelling: undelivered chunks stay on disk and resume at the next
start, unread lines are read again from the saved positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from pipeline.clock import Clock, SystemClock
from pipeline.config import Settings
from pipeline.runtime.committer import END, Committer, EndOfInput
from pipeline.runtime.signals import SignalIntents
from pipeline.runtime.topology import Topology, build
from pipeline.sources.base import LineBatch
from pipeline.transforms.records import ProcessedBatch, RecordProcessor

log = logging.getLogger("logferry")
QUEUE_BATCHES = 4  # blocks in flight between stages: bounds memory, gives back-pressure


async def process_loop(
    processor: RecordProcessor,
    inbox: asyncio.Queue[LineBatch | EndOfInput],
    outbox: asyncio.Queue[ProcessedBatch | EndOfInput],
) -> None:
    """Parse and enrich batches until END, then pass END on."""
    while True:
        batch = await inbox.get()
        if isinstance(batch, EndOfInput):
            await outbox.put(END)
            return
        await outbox.put(processor.process(batch))


class Daemon:
    """The running pipeline."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.topology: Topology | None = None
        self.committer: Committer | None = None

    async def run(self, stop: asyncio.Event, quit_now: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set, then stop in order (``quit_now`` skips the waiting)."""
        topology = self.topology = await asyncio.to_thread(build, self.settings, self.clock)
        try:
            await self._run(topology, stop, quit_now or asyncio.Event())
        finally:
            topology.release()

    async def _run(self, topo: Topology, stop: asyncio.Event, quit_now: asyncio.Event) -> None:
        raw: asyncio.Queue[LineBatch | EndOfInput] = asyncio.Queue(QUEUE_BATCHES)
        processed: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue(QUEUE_BATCHES)
        committer = self.committer = Committer(
            processed, topo.routes, list(topo.buffers.values()), topo.positions, topo.dead_letters, self.clock
        )
        for output in topo.outputs.values():
            await output.start()
        async with asyncio.TaskGroup() as tasks:
            flushers = [tasks.create_task(f.run(), name=f"flusher:{n}") for n, f in topo.flushers.items()]
            committing = tasks.create_task(committer.run(), name="committer")
            processing = tasks.create_task(process_loop(topo.processor, raw, processed), name="processor")
            reading = [tasks.create_task(s.run(raw.put), name=f"source:{s.name}") for s in topo.sources]
            log.info("logferry running sources=%s outputs=%s", len(reading), len(flushers))
            await stop.wait()
            stopping = self._stop(topo, raw, reading, committing)
            await _until(stopping, quit_now, self.settings.shutdown_timeout, "stop")
            for task in [*reading, processing, committing, *flushers]:
                task.cancel()
        for output in topo.outputs.values():
            await output.close()
        self._log_stragglers(topo)

    async def _stop(
        self,
        topo: Topology,
        raw: asyncio.Queue[LineBatch | EndOfInput],
        reading: list[asyncio.Task[None]],
        committing: asyncio.Task[None],
    ) -> None:
        for source in topo.sources:
            source.stop()
        await asyncio.gather(*reading)
        await raw.put(END)
        if self.settings.flush_at_shutdown and self.committer is not None:
            self.committer.request_flush()
        await committing
        if self.settings.flush_at_shutdown:
            await asyncio.gather(*(b.wait_drained() for b in topo.buffers.values()))

    def _log_stragglers(self, topo: Topology) -> None:
        for name, buffer in topo.buffers.items():
            if buffer.pending_chunks():
                log.info("output %s: %d chunks stay buffered and resume at the next start", name,
                         buffer.pending_chunks())


async def _until(work: Awaitable[None], quit_now: asyncio.Event, deadline: float, what: str) -> None:
    """Await ``work`` until it ends, the deadline passes, or ``quit_now`` is set."""
    task = asyncio.ensure_future(work)
    quitter = asyncio.ensure_future(quit_now.wait())
    try:
        done, _ = await asyncio.wait({task, quitter}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            log.warning("%s did not finish within %.1fs: cancelling the rest", what, deadline)
        else:
            task.result()
    finally:
        for pending in (task, quitter):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending


async def serve(settings: Settings) -> None:
    """Run the daemon with signal handling until SIGTERM/SIGINT."""
    daemon = Daemon(settings)
    intents = SignalIntents(on_flush=lambda: daemon.committer.request_flush() if daemon.committer else None)
    intents.install()
    try:
        await daemon.run(intents.stop, intents.quit)
    finally:
        intents.remove()
    log.info("logferry stopped")
