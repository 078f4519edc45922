"""ParsePool: parse plain blocks in worker processes, so the per-record work runs on the second core.

The event loop keeps everything that orders and commits: it reads the blocks, copies each into a
slot of a shared memory (one ``memfd`` the workers map too), and sends the slot number; a worker
(:mod:`pipeline.runtime.parse_worker`) parses, enriches and serialises the block, writes the
records and their offsets back into the slot, and answers with their lengths. Only those numbers
cross the socket, never pickled records: that cost is what sank an earlier try with a process pool.

Order: :meth:`ParsePool.run` hands the committer the processed batches in the order the sources
gave them (a queue of futures, awaited first in, first out), so frames stay in file order and the
buffer's invariants (a position saved only with its frames, exactly once across kill -9) are the
ones the in-process path keeps. Blocks a worker cannot take (records the source decoded itself, as
forward's Message and Forward modes; blocks larger than a slot or smaller than 64 KiB, as a steady
writer's few lines) are parsed on the event loop as before, in their place in that order. A block
whose records span several time windows is split by the worker, one region per window.

A forward source's PackedForward chunk is a block too: its msgpack entries (framing checked by the
source) are decoded, enriched and serialised by a worker as the loop would (the same functions:
:mod:`pipeline.transforms.packed`), which takes most of a chunk's time off the loop. So is a
kafka source's batch (one partition's messages, one per line): the worker gives each record's byte
position, as for a file, and the loop puts the message's offset in its place. (Blocks parsed by a
worker carry no ids for a kafka output, which then parses their records again: as for a file.)

Transforms run in the workers too: each gets the :class:`~pipeline.transforms.plan.TransformPlan`
pickled in its setup (a redact transform as its plain spec, the HMAC key read by the daemon at load
time), applies a block's chains as :class:`~pipeline.transforms.records.RecordProcessor` does, and
writes each output's variant as its own regions (a variant no record changed shares the records'
regions). The transforms' counters come back with the answer and are added to the daemon's; dead
letters are masked here, where their counters are. A slot's result area holds one more copy per
distinct output chain; a block whose variants still do not fit is processed on the loop. With a
redact transform, a worker holds Hyperscan and its databases: its peak ~8.4 MB higher (2.1 MB of it
its own, the rest library pages the daemon maps too), and catch-up with two workers goes from
0.71-0.80x of the floor to 0.84-0.87x (docs/PERFORMANCE.md §4).

A worker that fails a block, or exits, is logged with its reason, and its blocks are parsed on
the loop (the batches keep their bytes until handed on); the other workers go on, and with none
left everything runs on the loop. Workers exit when the daemon closes the pool, or on EOF when
the daemon is killed: they keep no state.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import subprocess
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pipeline.errors import LogferryError
from pipeline.processes import reap
from pipeline.runtime.committer import END, EndOfInput
from pipeline.runtime.memory import ARENAS, MMAP_THRESHOLD, TRIM_THRESHOLD
from pipeline.runtime.parse_worker import Done, Job, Setup
from pipeline.sources.base import LineBatch
from pipeline.transforms.plan import TransformPlan
from pipeline.transforms.records import ProcessedBatch, RecordProcessor, TimeGroup, line_offsets

log = logging.getLogger("logferry.parse")
# One block parsed while the next one waits in the worker's memory. One slot per worker measured ~10 %
# slower on small records with fsync = false (where the workers are busiest; catchup.py, 1,000,000
# records of <= 300 chars, parse_workers = 2: 251,000 and 257,000 rec/s against 277,000 and 282,000,
# alternating) for ~19 MB less peak RSS (docs/PERFORMANCE.md §3).
SLOTS_PER_WORKER = 2
IN_BYTES = 4 << 20  # a slot's block: tail reads 1 MiB steps by default; larger blocks parse on the loop
OUT_BYTES = 2 * IN_BYTES + (1 << 20)  # records grow by the added fields; offsets follow them
# A few lines written at a steady rate parse in microseconds on the loop: a round trip to a worker
# would only add two wake-ups. A backlog is read in 1 MiB blocks, which is where workers pay.
MIN_WORKER_BYTES = 64 << 10
CLOSE_WAIT = 5.0  # seconds for all workers together to exit at close, then they are killed
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding this `pipeline` package


@dataclass
class Pending:
    """A block sent to a worker, and who waits for its processed batch."""

    batch: LineBatch
    now: float
    future: asyncio.Future[ProcessedBatch]
    slot: int


@dataclass
class Worker:
    """One worker process, its end of the socket and its jobs in the order sent."""

    process: subprocess.Popen[bytes]
    conn: Connection
    slots: list[int]
    pending: deque[Pending] = field(default_factory=deque)
    alive: bool = True


class ParsePool:
    """Worker processes that parse plain blocks; see the module's docstring for what stays on the loop."""

    def __init__(self, processor: RecordProcessor, workers: int, out_bytes: int = OUT_BYTES) -> None:
        """``out_bytes``: a slot's result area per copy of the records (the block's own, then each variant)."""
        self.processor = processor
        self.size = workers
        self.slot_bytes = IN_BYTES + out_bytes * (1 + variants(processor.plan))
        self.workers: list[Worker] = []
        self.blocks = 0  # parsed by a worker
        self.inline = 0  # parsed on the loop
        self._memory: mmap.mmap | None = None
        self._free: asyncio.Queue[int] = asyncio.Queue()

    def stats(self) -> dict[str, Any]:
        """For /status and /metrics: workers configured and alive, blocks parsed by them and on the loop,
        and each live worker's process id and blocks sent to it but not answered yet."""
        return {"configured": self.size, "alive": sum(w.alive for w in self.workers),
                "blocks_in_workers": self.blocks, "blocks_on_loop": self.inline,
                "waiting": {str(w.process.pid): len(w.pending) for w in self.workers if w.alive}}

    def start(self) -> None:
        """Start the workers; raises LogferryError if one cannot be started."""
        slots = self.size * SLOTS_PER_WORKER
        memory_fd = os.memfd_create("logferry-parse", os.MFD_CLOEXEC)  # pass_fds gives it to the workers
        try:
            os.ftruncate(memory_fd, slots * self.slot_bytes)
            self._memory = mmap.mmap(memory_fd, slots * self.slot_bytes)
            plan = self.processor.plan
            setup = Setup(self.slot_bytes, IN_BYTES, self.processor.enricher.keys, self.processor.time_key,
                          tuple(self.processor.widths), plan if plan.routes else None)
            for n in range(self.size):
                owned = list(range(n * SLOTS_PER_WORKER, (n + 1) * SLOTS_PER_WORKER))
                self._spawn(memory_fd, slots * self.slot_bytes, owned, setup)
        except OSError as exc:
            self.close()
            raise LogferryError(f"cannot start the parse workers: {exc}") from exc
        finally:
            os.close(memory_fd)  # each worker and our map hold it now
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            loop.add_reader(worker.conn.fileno(), self._on_answer, worker)
            for slot in worker.slots:
                self._free.put_nowait(slot)
        log.info("parse workers started workers=%d", self.size)

    def _spawn(self, memory_fd: int, size: int, slots: list[int], setup: Setup) -> Worker:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "pipeline.runtime.parse_worker", str(theirs.fileno()),
                 str(memory_fd), str(size)],
                pass_fds=(theirs.fileno(), memory_fd), stdin=subprocess.DEVNULL, env=worker_env(os.environ),
            )
            conn = Connection(os.dup(ours.fileno()))
        worker = Worker(process, conn, slots)
        self.workers.append(worker)  # before the first send: close() ends it whatever happens next
        conn.send(setup)
        return worker

    def close(self) -> None:
        """Tell the workers to exit and wait for them (killed if they are not gone within CLOSE_WAIT in all)."""
        for worker in self.workers:
            try:
                asyncio.get_running_loop().remove_reader(worker.conn.fileno())
            except RuntimeError:  # no loop: start() failed before registering
                pass
            try:
                worker.conn.send(None)
            except OSError:
                pass  # already gone: nothing to tell
            worker.conn.close()
        deadline = time.monotonic() + CLOSE_WAIT
        for worker in self.workers:
            reap(worker.process, deadline - time.monotonic())
        self.workers.clear()
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    async def run(self, inbox: asyncio.Queue[LineBatch | EndOfInput],
                  outbox: asyncio.Queue[ProcessedBatch | EndOfInput],
                  publish: Callable[[ProcessedBatch], None]) -> None:
        """Process batches until END, handing them on in the order they came; then pass END on."""
        order: asyncio.Queue[asyncio.Future[ProcessedBatch] | None] = asyncio.Queue(
            len(self.workers) * SLOTS_PER_WORKER + 2)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_hand_on(order, outbox, publish), name="processor:hand-on")
            while True:
                batch = await inbox.get()
                if isinstance(batch, EndOfInput):
                    await order.put(None)
                    return
                await order.put(await self._submit(batch))

    async def _submit(self, batch: LineBatch) -> asyncio.Future[ProcessedBatch]:
        future: asyncio.Future[ProcessedBatch] = asyncio.get_running_loop().create_future()
        if not self._takes(batch):
            self.inline += 1
            future.set_result(self.processor.process(batch))
            return future
        slot = await self._free.get()
        worker = self.workers[slot // SLOTS_PER_WORKER]
        if not worker.alive:  # its slots leave circulation
            return await self._submit(batch)
        assert self._memory is not None
        start = slot * self.slot_bytes
        self._memory[start : start + len(batch.data)] = batch.data
        now = self.processor.clock.time()
        added = self.processor.enricher.fields(batch.tag, now)
        route = batch.source if batch.source in self.processor.plan.routes else None
        try:
            worker.conn.send(Job(slot, len(batch.data), batch.start, self.processor.enricher.suffix(added), added, now,
                                 route, batch.packed))
        except OSError as exc:
            self._worker_gone(worker, exc)
            self._free.put_nowait(slot)  # out of circulation with its worker
            return await self._submit(batch)
        worker.pending.append(Pending(batch, now, future, slot))
        return future

    def _takes(self, batch: LineBatch) -> bool:
        return ((batch.packed or batch.records is None)
                and MIN_WORKER_BYTES <= len(batch.data) <= IN_BYTES
                and any(worker.alive for worker in self.workers))

    def _on_answer(self, worker: Worker) -> None:
        """The worker's socket is readable: resolve every job it has answered."""
        while worker.alive:
            try:
                if not worker.conn.poll():
                    return
                done: Done = worker.conn.recv()
            except Exception as exc:  # noqa: BLE001 - EOF, a broken socket, an answer that cannot be read
                self._worker_gone(worker, exc)
                return
            self._resolve(worker.pending.popleft(), done)

    def _resolve(self, job: Pending, done: Done) -> None:
        """Hand the job's future its batch; an error here (a bug) fails the processor, as it would in-process."""
        try:
            if job.future.done():  # the processor was cancelled (stopping): nobody waits for it
                return
            if done.kind == "ok":
                self.blocks += 1
                job.future.set_result(self._processed(job, done))
                if done.tallies:
                    self.processor.plan.add_tallies(done.tallies)
                job.batch.data = b""  # the records are in the groups: the block would double what waits in line
                return
            if done.kind == "error":
                log.error("parse worker failed a block (parsed in the daemon instead): %s", done.reason)
            self.inline += 1
            job.future.set_result(self.processor.process(job.batch))
        except Exception as exc:  # noqa: BLE001 - handed to whoever awaits the batch, so the processor task fails
            if not job.future.done():
                job.future.set_exception(exc)
        finally:
            self._free.put_nowait(job.slot)

    def _processed(self, job: Pending, done: Done) -> ProcessedBatch:
        """The worker's records grouped as the in-process path groups them; a region shared by widths or
        variants is copied out once, and outputs taking the same variant share its groups."""
        assert self._memory is not None
        batch = job.batch
        area = done.slot * self.slot_bytes + IN_BYTES
        # A batch with its own offsets (a Kafka partition's messages): the worker gives byte positions.
        where = line_offsets(batch) if batch.offsets is not None else None
        regions: list[tuple[bytes, list[int]]] = []
        for region in done.regions:
            at = area + region.start
            offsets = array("q")
            offsets.frombytes(self._memory[at + region.payload : at + region.payload + region.count * offsets.itemsize])
            positions = offsets.tolist()
            regions.append((self._memory[at : at + region.payload],
                            positions if where is None else [where[p] for p in positions]))

        def group(index: int) -> TimeGroup:
            payload, offsets_list = regions[index]
            return TimeGroup([payload], offsets_list, done.regions[index].crc)

        route = self.processor.plan.routes.get(batch.source)
        groups: dict[int, dict[int, TimeGroup]] = {width: {} for width in self.processor.plain_widths(route)}
        for width, window, index in done.groups:
            groups[width][window] = group(index)
        variants: dict[tuple[tuple[int, int], ...], dict[int, TimeGroup]] = {}
        by_output: dict[str, dict[int, TimeGroup]] = {}
        for output, windows in done.outputs:
            if windows not in variants:
                variants[windows] = {window: group(index) for window, index in windows}
            by_output[output] = variants[windows]
        dead = [*batch.dead, *(self.processor.dead_entry(batch, offset if where is None else where[offset], line,
                                                         reason, job.now) for offset, line, reason in done.bad)]
        if route is not None:
            dead = self.processor.masked(route, dead)  # here, not in the worker: its counters are the daemon's
        if batch.packed:  # the entries the worker found, stored and dead-lettered, as the processor counts them
            batch.end = batch.start + done.count + len(done.bad)
        return ProcessedBatch(batch, groups, dead, done.count, by_output)

    def _worker_gone(self, worker: Worker, exc: BaseException) -> None:
        """Take the worker out of the pool and parse its unanswered blocks here, in their place."""
        if not worker.alive:
            return
        worker.alive = False
        asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        if worker.process.poll() is None:
            worker.process.kill()
        code = worker.process.wait()
        left = sum(w.alive for w in self.workers)
        log.error("parse worker %d failed (exit code %s: %s): its %d blocks are parsed in the daemon; "
                  "%d workers left", worker.process.pid, code, f"{type(exc).__name__}: {exc}" if str(exc)
                  else "its socket closed", len(worker.pending), left)
        while worker.pending:
            job = worker.pending.popleft()
            self._free.put_nowait(job.slot)  # wakes a block waiting for a slot: it goes elsewhere, or stays here
            if job.future.done():
                continue
            self.inline += 1
            try:
                job.future.set_result(self.processor.process(job.batch))
            except Exception as exc:  # noqa: BLE001 - the processor task fails with it, as in-process
                job.future.set_exception(exc)


def variants(plan: TransformPlan) -> int:
    """The most variants (distinct output chains) a source's blocks come out in, besides their own records."""
    return max((len({chain for _, chain in route.outputs.values()}) for route in plan.routes.values()), default=0)


def worker_env(environ: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: ``environ``, the daemon's package root first on PYTHONPATH, and the
    daemon's malloc settings (:mod:`pipeline.runtime.memory`) as glibc's variables where ``environ`` sets
    none, so the worker need not import ctypes to apply them."""
    # -P and the daemon's own package root: the worker runs this very code, whatever the cwd holds.
    env = {**environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, environ.get("PYTHONPATH")]))}
    env.setdefault("MALLOC_ARENA_MAX", str(ARENAS))
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))  # each block's results reuse the heap
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(TRIM_THRESHOLD))  # ... without faulting it in again
    return env


async def _hand_on(order: asyncio.Queue[asyncio.Future[ProcessedBatch] | None],
                   outbox: asyncio.Queue[ProcessedBatch | EndOfInput],
                   publish: Callable[[ProcessedBatch], None]) -> None:
    """Pass processed batches on in the order they were submitted, then END."""
    while True:
        future = await order.get()
        if future is None:
            await outbox.put(END)
            return
        processed = await future
        processed.batch.data = b""  # the records live in the groups now
        publish(processed)
        await outbox.put(processed)
