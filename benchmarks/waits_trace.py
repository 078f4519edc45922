#!/usr/bin/env python3
"""The daemon with a stopwatch around each pipeline stage, for ``profile_waits.py``.

  python benchmarks/waits_trace.py TRACE.json SWITCH_INTERVAL EXPERIMENT -c CONFIG

runs ``logferry run -c CONFIG`` in this process after wrapping, from the outside, the
methods each stage runs (nothing in ``pipeline/`` is changed or knows about it), and writes
what it saw to TRACE.json when the daemon stops (SIGTERM):

* ``intervals``: one row per call of a wrapped method: stage, native thread id, start and
  end (``time.perf_counter``, i.e. CLOCK_MONOTONIC, comparable with another process's), and
  for a plain method the thread's CPU time over the call (``time.thread_time``; -1 for an
  awaited coroutine, whose wall time is a wait, its CPU someone else's).
* ``hops``: for each ``asyncio.to_thread`` call, when it was made, when the function began
  in the worker thread, when it ended there, and when the awaiting task resumed: the two
  hand-offs between the event loop and a worker thread.
* ``callbacks``: every event-loop callback (``Handle._run``) by label (a task's name, else
  the callback's name): count, total and longest, plus each one over 5 ms with its start.
* ``threads``: native id → name.

SWITCH_INTERVAL (seconds) replaces the daemon's GIL switch interval (0: keep the daemon's).
EXPERIMENT ``yield`` makes the processor let the event loop run other ready tasks before it
takes each batch (``await asyncio.sleep(0)``), so a commit or delivery whose worker thread
has finished resumes after one parse instead of after every batch already queued; ``-``: none.
The wrappers cost about a microsecond per call; there are a few per 1 MiB block.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import functools
import selectors
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline import cli  # noqa: E402
from pipeline.buffer.chunk import Chunk  # noqa: E402
from pipeline.buffer.file_buffer import CommitPlan, FileBuffer  # noqa: E402
from pipeline.outputs import flusher as flusher_module  # noqa: E402
from pipeline.outputs.file import output as file_output  # noqa: E402
from pipeline.runtime import app, committer  # noqa: E402
from pipeline.runtime.tap import TapHub  # noqa: E402
from pipeline.sources.tail import source as tail_source  # noqa: E402
from pipeline.sources.tail.checkpoint import PositionStore  # noqa: E402
from pipeline.sources.tail.reader import CachedReader  # noqa: E402
from pipeline.transforms.records import RecordProcessor  # noqa: E402

LONG_CALLBACK = 0.005
Row = tuple[str, int, float, float, float]  # stage, thread, start, end, thread CPU seconds (-1: awaited)

intervals: list[Row] = []
hops: list[tuple[str, int, float, float, float, float]] = []  # function, worker thread, call, begin, end, resumed
callbacks: dict[str, list[float]] = {}  # label -> [count, total seconds, longest]
long_callbacks: list[tuple[str, float, float]] = []  # label, start, seconds
thread_names: dict[int, str] = {}
_clock, _cpu, _tid = time.perf_counter, time.thread_time, threading.get_native_id


def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a plain function) recording its wall and thread CPU time under ``stage``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, cpu = _clock(), _cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            intervals.append((stage, _tid(), start, _clock(), _cpu() - cpu))

    return wrapper


def timed_await(stage: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` (a coroutine function) recording how long its caller waited for it under ``stage``."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = _clock()
        try:
            return await fn(*args, **kwargs)
        finally:
            intervals.append((stage, _tid(), start, _clock(), -1.0))

    return wrapper


def wrap(owner: Any, name: str, stage: str, awaited: bool = False) -> None:
    """Replace ``owner.name`` by its timed version."""
    original = getattr(owner, name)
    setattr(owner, name, (timed_await if awaited else timed)(stage, original))


class TimedQueue:
    """The processor's view of its two queues: waits for input and for room are recorded."""

    def __init__(self, queue: asyncio.Queue[Any], get_stage: str, put_stage: str, yield_first: bool = False) -> None:
        self.queue, self.get_stage, self.put_stage = queue, get_stage, put_stage
        self.yield_first = yield_first

    async def get(self) -> Any:
        """The next item, the wait for it timed (after letting other tasks run, with the experiment)."""
        if self.yield_first:
            await asyncio.sleep(0)
        return await timed_await(self.get_stage, self.queue.get)()

    async def put(self, item: Any) -> None:
        """Put an item, the wait for room timed."""
        await timed_await(self.put_stage, self.queue.put)(item)


async def traced_to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``asyncio.to_thread`` noting the hand-off into the worker thread and back."""
    marks: list[float] = []
    worker: list[int] = []

    def run() -> Any:
        worker.append(_tid())
        thread_names.setdefault(worker[0], threading.current_thread().name)
        marks.append(_clock())
        try:
            return func(*args, **kwargs)
        finally:
            marks.append(_clock())

    called = _clock()
    try:
        return await _to_thread(run)
    finally:
        if len(marks) == 2:
            hops.append((getattr(func, "__qualname__", repr(func)), worker[0], called, marks[0], marks[1], _clock()))


_to_thread = asyncio.to_thread


def _callback_label(handle: asyncio.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return f"task {owner.get_name()}"
    return getattr(callback, "__qualname__", type(callback).__name__)


_handle_run = asyncio.events.Handle._run


def traced_handle_run(self: asyncio.Handle) -> None:
    """Every callback the event loop runs, timed: the loop is blocked for as long as one runs."""
    start = _clock()
    try:
        _handle_run(self)
    finally:
        took = _clock() - start
        label = _callback_label(self)
        entry = callbacks.setdefault(label, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += took
        entry[2] = max(entry[2], took)
        if took >= LONG_CALLBACK:
            long_callbacks.append((label, start, took))


def instrument(switch_interval: float, experiment: str) -> None:
    """Wrap every stage (see the module docstring)."""
    wrap(selectors.EpollSelector, "select", "loop.idle_in_select")
    asyncio.events.Handle._run = traced_handle_run  # type: ignore[method-assign]
    asyncio.to_thread = traced_to_thread  # modules look it up at each call
    # source
    wrap(CachedReader, "read", "source.read_on_loop")
    wrap(tail_source.TailSource, "_read_result", "source.read_in_thread")
    wrap(tail_source.TailSource, "_discover", "source.discover")
    _wrap_source_emit()
    # processor
    wrap(RecordProcessor, "process", "processor.parse_enrich")
    wrap(TapHub, "publish", "processor.tap_publish")
    _wrap_process_loop(yield_first=experiment == "yield")
    # committer (on the loop, then its worker thread)
    wrap(committer.Committer, "_wait", "committer.wait_for_input", awaited=True)
    wrap(committer.Committer, "_make_room", "committer.wait_for_room", awaited=True)
    wrap(committer.Committer, "commit", "committer.commit", awaited=True)
    wrap(committer.Committer, "_stage", "committer.stage_frames")
    wrap(PositionStore, "encode", "committer.encode_positions")
    wrap(committer.Committer, "_apply", "committer.await_thread", awaited=True)
    wrap(committer.Committer, "_write", "committer.thread")
    wrap(Chunk, "write", "committer.thread.write_frames")
    wrap(Chunk, "sync", "committer.thread.fsync_chunks")
    wrap(PositionStore, "save", "committer.thread.save_positions")
    wrap(FileBuffer, "enqueue_due", "committer.enqueue_due")
    _ = CommitPlan  # its apply() is write_frames + fsync_chunks + directory syncs
    # flusher and the file output
    wrap(FileBuffer, "dequeue", "flusher.wait_for_chunk", awaited=True)
    wrap(file_output.FileOutput, "write", "flusher.await_write", awaited=True)
    wrap(file_output.FileOutput, "_write", "flusher.thread.write")
    wrap(file_output.FileOutput, "_claim", "flusher.thread.journal")
    wrap(file_output.FileOutput, "_append", "flusher.thread.copy")
    wrap(file_output, "sync", "flusher.thread.fsync_output")  # the module's own name for durability.sync
    wrap(flusher_module.Flusher, "settle", "flusher.settle", awaited=True)
    wrap(Chunk, "delete", "chunk.delete")
    wrap(FileBuffer, "ack", "flusher.ack")
    if switch_interval > 0:
        app.GIL_SWITCH_INTERVAL = switch_interval  # read by serve() when it starts


def _wrap_source_emit() -> None:
    run = tail_source.TailSource.run

    async def traced_run(self: tail_source.TailSource, emit: Callable[[Any], Awaitable[None]]) -> None:
        await run(self, timed_await("source.wait_for_room", emit))

    tail_source.TailSource.run = traced_run  # type: ignore[method-assign]


def _wrap_process_loop(yield_first: bool) -> None:
    process_loop = app.process_loop

    async def traced(processor: RecordProcessor, inbox: Any, outbox: Any, tap: TapHub) -> None:
        timed_inbox: Any = TimedQueue(inbox, "processor.wait_for_input", "-", yield_first)
        timed_outbox: Any = TimedQueue(outbox, "-", "processor.wait_for_room")
        await process_loop(processor, timed_inbox, timed_outbox, tap)

    app.process_loop = traced


def write_trace(path: Path) -> None:
    """Everything recorded, as JSON."""
    threads = {**thread_names, **{t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}}
    path.write_bytes(orjson.dumps({
        "intervals": intervals, "hops": hops, "callbacks": callbacks, "long_callbacks": long_callbacks,
        "threads": {str(k): v for k, v in threads.items()}, "switch_interval": sys.getswitchinterval(),
    }))


def main() -> int:
    """Instrument, run the daemon until it stops, write the trace."""
    trace, switch_interval, experiment, *argv = sys.argv[1:]
    instrument(float(switch_interval), experiment)
    try:
        return cli.main(["run", *argv])
    finally:
        write_trace(Path(trace))


if __name__ == "__main__":
    raise SystemExit(main())
