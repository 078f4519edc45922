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
import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.clock import Clock, SystemClock
from pipeline.config import OutputConfig, Settings, secret_value
from pipeline.errors import ConfigError, LogferryError
from pipeline.runtime.committer import END, Committer, EndOfInput
from pipeline.runtime.health import Observer
from pipeline.runtime.http import serve_forever, start_http
from pipeline.runtime.parse_pool import ParsePool
from pipeline.runtime.signals import SignalIntents
from pipeline.runtime.systemd import Notifier
from pipeline.runtime.tap import TapHub
from pipeline.runtime.tap_socket import serve_tap, socket_path, start_tap_socket
from pipeline.runtime.topology import Topology, build
from pipeline.sources.base import LineBatch, PreparingSource
from pipeline.transforms.records import ProcessedBatch, RecordProcessor

log = logging.getLogger("logferry")
QUEUE_BATCHES = 8  # blocks in flight between stages: bounds memory, gives back-pressure
# The event-loop thread parses (CPU-bound) while worker threads write, fsync and read
# chunks in short steps that each need the GIL back; with Python's default 5 ms switch
# interval every such step can wait 5 ms (a convoy). 0.5 ms measured best for catch-up
# (benchmarks/catchup.py: 0.67x -> 0.85x of the floor with fsync; 0.2 ms was worse).
GIL_SWITCH_INTERVAL = 0.0005


def freeze_startup_heap() -> None:
    """Keep the objects alive at start (modules, config models, the topology) out of every collection.

    Records decoded as dicts (the forward and Kafka sources) are container objects that live until
    their commit, so the collector's full passes come every few tens of thousands of records, and
    each one also walked the ~43,000 containers made at start: 13-25 ms with the loop blocked,
    three per 100,000 forward records (benchmarks/forward.py). Frozen (``gc.freeze``), they are
    skipped: a full pass then took 0.3 ms. Frozen objects are still freed by reference counting.
    """
    gc.collect()  # garbage of the start is not kept frozen
    gc.freeze()


async def process_loop(
    processor: RecordProcessor,
    inbox: asyncio.Queue[LineBatch | EndOfInput],
    outbox: asyncio.Queue[ProcessedBatch | EndOfInput],
    tap: TapHub,
) -> None:
    """Parse and enrich batches until END, then pass END on."""
    while True:
        batch = await inbox.get()
        if isinstance(batch, EndOfInput):
            await outbox.put(END)
            return
        processed = processor.process(batch)
        batch.data = b""  # the records live in the groups now; the raw block would double the memory in flight
        tap.publish(processed)
        await outbox.put(processed)


class Daemon:
    """The running pipeline."""

    def __init__(self, settings: Settings, clock: Clock | None = None, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier({})
        self.topology: Topology | None = None
        self.committer: Committer | None = None
        self.observer: Observer | None = None
        self.reloading = False  # stopped to make way for a new configuration: the service is not stopping

    async def run(self, stop: asyncio.Event, quit_now: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set, then stop in order (``quit_now`` skips the waiting)."""
        topology = self.topology = await asyncio.to_thread(build, self.settings, self.clock)
        freeze_startup_heap()
        try:
            await self._run(topology, stop, quit_now or asyncio.Event())
        finally:
            topology.release()
            gc.unfreeze()  # what this run built may now become garbage (a reload builds anew)

    async def _run(self, topo: Topology, stop: asyncio.Event, quit_now: asyncio.Event) -> None:
        raw: asyncio.Queue[LineBatch | EndOfInput] = asyncio.Queue(QUEUE_BATCHES)
        processed: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue(QUEUE_BATCHES)
        committer = self.committer = Committer(
            processed, topo.routes, list(topo.buffers.values()), topo.positions, topo.dead_letters, self.clock,
            topo.id_outputs,
        )
        try:
            await self._pipeline(topo, committer, raw, processed, stop, quit_now)
        finally:
            for output in topo.outputs.values():
                await output.close()

    async def _pipeline(
        self,
        topo: Topology,
        committer: Committer,
        raw: asyncio.Queue[LineBatch | EndOfInput],
        processed: asyncio.Queue[ProcessedBatch | EndOfInput],
        stop: asyncio.Event,
        quit_now: asyncio.Event,
    ) -> None:
        # Outputs check their destinations concurrently: an unreachable one must not delay the others. Sources
        # settle what they must before any chunk is delivered (a Kafka source: records another member delivers).
        await asyncio.gather(*(flusher.start() for flusher in topo.flushers.values()),
                             *(source.prepare() for source in topo.sources if isinstance(source, PreparingSource)))
        async with asyncio.TaskGroup() as tasks:
            flushers = [tasks.create_task(f.run(), name=f"flusher:{n}") for n, f in topo.flushers.items()]
            committing = tasks.create_task(committer.run(), name="committer")
            tap = TapHub({src: [b.output for b in routed] for src, routed in topo.routes.items()})
            pool = ParsePool(topo.processor, self.settings.parse_workers) if self.settings.parse_workers else None
            processing = tasks.create_task(self._process(topo, raw, processed, tap, pool), name="processor")
            reading = [tasks.create_task(s.run(raw.put), name=f"source:{s.name}") for s in topo.sources]
            observer = self.observer = Observer(topo, committer, self.settings.health, self.clock.monotonic,
                                                lambda: len(tap.viewers), pool.stats if pool else dict)
            watching = []
            # Answering before "running" (and READY=1): whoever is told we run can ask us how.
            if self.settings.health.listen and (server := await self._start_http(observer)):
                watching.append(tasks.create_task(serve_forever(server), name="http"))
            if self.settings.tap.enabled and (server := await self._start_tap(tap)):
                watching.append(tasks.create_task(serve_tap(server, socket_path(self.settings), tap), name="tap"))
            watching.append(tasks.create_task(self._monitor(observer), name="monitor"))  # its STATUS follows READY
            log.info("logferry running sources=%s outputs=%s", len(reading), len(flushers))
            self.notifier.ready(f"running: {len(reading)} sources, {len(flushers)} outputs")
            await stop.wait()
            if not self.reloading:
                self.notifier.stopping()
            stopping = self._stop(topo, raw, reading, committing)
            await _until(stopping, quit_now, self.settings.shutdown_timeout, "stop")
            for task in [*reading, processing, committing, *flushers, *watching]:
                task.cancel()
        self._log_stragglers(topo)

    async def _process(self, topo: Topology, raw: asyncio.Queue[LineBatch | EndOfInput],
                       processed: asyncio.Queue[ProcessedBatch | EndOfInput], tap: TapHub,
                       pool: ParsePool | None) -> None:
        """The processor stage: on the event loop, or beside it in the ``parse_workers`` processes."""
        if pool is None:
            await process_loop(topo.processor, raw, processed, tap)
            return
        pool.start()
        try:
            await pool.run(raw, processed, tap.publish)
        finally:
            pool.close()

    async def _stop(
        self,
        topo: Topology,
        raw: asyncio.Queue[LineBatch | EndOfInput],
        reading: list[asyncio.Task[None]],
        committing: asyncio.Task[None],
    ) -> None:
        for source in topo.sources:
            source.stop()
        assert self.committer is not None
        draining = asyncio.ensure_future(self._drain(topo, raw, reading, committing))
        paused = asyncio.ensure_future(self.committer.paused.wait())
        try:
            await asyncio.wait({draining, paused}, return_when=asyncio.FIRST_COMPLETED)
            if draining.done():
                draining.result()
                return
            # A full buffer holds the pipeline: nothing more can be committed now. What was
            # read but not committed is read again at the next start.
            log.info("stopping while the sources are paused (a buffer is full): uncommitted lines are "
                     "read again at the next start")
        finally:
            for task in (draining, paused):
                task.cancel()

    async def _drain(
        self,
        topo: Topology,
        raw: asyncio.Queue[LineBatch | EndOfInput],
        reading: list[asyncio.Task[None]],
        committing: asyncio.Task[None],
    ) -> None:
        await asyncio.gather(*reading)
        await raw.put(END)
        if self.settings.flush_at_shutdown and self.committer is not None:
            self.committer.request_flush()
        await committing
        if self.settings.flush_at_shutdown:
            await asyncio.gather(*(b.wait_drained() for b in topo.buffers.values()))

    async def _monitor(self, observer: Observer) -> None:
        """Log health changes, tell systemd our status, and ping its watchdog unless a tail is stalled."""
        every = self.settings.health.check_interval
        interval = min(every, self.notifier.watchdog_interval or every)
        reported: set[str] = set()
        while True:
            snapshot = observer.snapshot()
            for problem in set(snapshot["problems"]) - reported:
                log.error("unhealthy: %s", problem)
            reported = set(snapshot["problems"])
            self.notifier.status(status_line(snapshot))
            if not observer.stalled(snapshot):
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _start_http(self, observer: Observer) -> asyncio.Server | None:
        try:
            address_file = self.settings.state_dir / "http.address"
            return await start_http(self.settings.health.listen, observer.snapshot, address_file)
        except OSError as exc:
            # Shipping logs matters more than the status endpoint: keep running, say so loudly.
            log.error("status endpoint %s unavailable: %s", self.settings.health.listen, exc)
            return None

    async def _start_tap(self, tap: TapHub) -> asyncio.Server | None:
        path = socket_path(self.settings)
        try:
            return await start_tap_socket(path, tap, self.settings.state_dir)
        except OSError as exc:
            log.error("tap socket %s unavailable (tap.socket): %s", path, exc)  # shipping goes on without it
            return None

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


def status_line(snapshot: dict[str, Any]) -> str:
    """One line for `systemctl status`."""
    outputs = ", ".join(f"{n}: {o['delivered_records']} delivered, {o['chunks']} buffered"
                        for n, o in snapshot["outputs"].items())
    state = "healthy" if snapshot["healthy"] else f"UNHEALTHY ({len(snapshot['problems'])} problems)"
    return f"{state}; {outputs}"


async def serve(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT; on SIGHUP apply a new valid config (an invalid one is refused).

    A reload is a clean stop of the running pipeline followed by a start with the new
    settings, in the same process: buffers and positions are on disk, so nothing read or
    buffered is lost, and the new config is validated before the old pipeline stops.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    notifier = Notifier()
    current: list[Daemon] = []
    intents = SignalIntents(on_flush=lambda: current[-1].committer.request_flush()
                            if current and current[-1].committer else None)
    intents.install()
    try:
        while True:
            daemon = Daemon(settings, notifier=notifier)
            current.append(daemon)
            new = await _run_until_stop_or_reload(daemon, intents, reload)
            if new is None:
                break
            settings = new
            log.info("configuration reloaded: restarting the pipeline with the new settings")
    finally:
        intents.remove()
    log.info("logferry stopped")


async def _run_until_stop_or_reload(
    daemon: Daemon, intents: SignalIntents, reload: Callable[[], Settings] | None
) -> Settings | None:
    """Run one pipeline; return new settings after a valid reload request, None after a stop."""
    halt = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(daemon.run(halt, intents.quit), name="pipeline")
        while True:
            await _first(intents.stop.wait(), intents.reload.wait(), asyncio.shield(running))
            if running.done() or intents.stop.is_set():
                halt.set()
                return None
            intents.reload.clear()
            daemon.notifier.reloading()
            new = await _load_new(reload)
            if new is None:
                # READY=1 ends systemd's reload (`systemctl reload` returns): the old pipeline goes on.
                daemon.notifier.ready("running: new configuration refused, the previous one stays")
                continue
            daemon.reloading = True
            halt.set()
            await running  # the new pipeline sends READY=1 once it runs
            return new


async def _load_new(reload: Callable[[], Settings] | None) -> Settings | None:
    """The new settings, validated and their files read; None (logged) if they cannot run."""
    if reload is None:
        log.warning("SIGHUP: this run has no configuration file to reload (--dev); ignored")
        return None
    try:
        new = await asyncio.to_thread(reload)
        # The old pipeline is stopped before the new one is built: what the build would fail
        # on must fail here, while the old one still runs.
        await asyncio.to_thread(check_resources, new)
        return new
    except LogferryError as exc:
        log.error("SIGHUP: new configuration refused, the running one stays: %s", exc)
        return None


def check_resources(settings: Settings) -> None:
    """Read every file the outputs' settings name (secrets, CA bundles); ConfigError naming the key.

    Blocking: run it in a worker thread.
    """
    for name, cfg in settings.outputs.items():
        for key in _file_keys(cfg):
            _check_file(name, cfg, key)


def _file_keys(cfg: OutputConfig) -> list[str]:
    """The keys of ``cfg`` that name a file (``password_file``, ``ca_file``, …) and are set."""
    return [key for key in type(cfg).model_fields if key.endswith("_file") and getattr(cfg, key) is not None]


def _check_file(output: str, cfg: OutputConfig, key: str) -> None:
    path = getattr(cfg, key)
    secret = key.removesuffix("_file")
    try:
        if secret in type(cfg).model_fields:
            secret_value(getattr(cfg, secret), path)  # read the way the output will read it
        else:
            path.read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"outputs.{output}.{key}: cannot read {path}: {reason}") from exc


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of ``waits`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
