"""Flusher: ack on success, nack with backoff on retryable errors, set aside when hopeless; the worker loop."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk
from pipeline.buffer.file_buffer import CommitPlan, FileBuffer
from pipeline.clock import FakeClock
from pipeline.config import BufferConfig
from pipeline.errors import RetryableError, UnrecoverableError
from pipeline.outputs.flusher import Flusher

WALL = 1_795_000_000.0
NOW_KEY = int(WALL) // 3600 * 3600


class FakeOutput:
    """Records what it was given; raises the queued errors first."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.delivered: list[bytes] = []
        self.attempts = 0

    async def start(self) -> None:
        pass

    async def write(self, chunk: Chunk) -> None:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.delivered.append(b"".join(chunk.payloads()))

    async def close(self) -> None:
        pass


def setup(tmp_path: Path, output: FakeOutput, **cfg: Any) -> tuple[Flusher, FileBuffer, FakeClock]:
    clock = FakeClock(WALL)
    config = BufferConfig(retry_randomize=False, retry_wait=2.0, retry_max_interval=60.0, **cfg)
    buffer = FileBuffer("out", tmp_path / "out", config, clock)
    buffer.resume(0)
    for seq, key in enumerate((NOW_KEY - 3600, NOW_KEY), start=1):
        plan = CommitPlan()
        payload = b'{"n":%d}\n{"n":%d}\n' % (seq, seq)
        buffer.plan(plan, key, seq, [frame.encode(frame.KIND_DATA, seq, 2, {"src": "a"}, payload)], 2)
        plan.apply()
    buffer.enqueue_due(force=True)
    return Flusher("out", output, buffer, clock), buffer, clock


@pytest.mark.asyncio
async def test_success_acks(tmp_path: Path) -> None:
    output = FakeOutput()
    flusher, buffer, _ = setup(tmp_path, output)
    chunk = await buffer.dequeue()
    path = chunk.path

    await flusher.deliver(chunk)

    assert output.delivered == [b'{"n":1}\n{"n":1}\n']
    assert not path.exists() and chunk not in buffer.in_flight
    assert flusher.stats.delivered_chunks == 1 and flusher.stats.delivered_records == 2
    assert flusher.stats.last_success == WALL and flusher.stats.failed_attempts == 0
    assert len(buffer.queue) == 1


@pytest.mark.asyncio
async def test_retryable_error_nacks_and_backs_off(tmp_path: Path) -> None:
    output = FakeOutput(RetryableError("503 from server"))
    flusher, buffer, clock = setup(tmp_path, output)
    chunk = await buffer.dequeue()

    await flusher.deliver(chunk)

    assert buffer.queue[0] is chunk and chunk.path.exists(), "back at the front of the queue"
    assert chunk not in buffer.in_flight
    assert flusher._resume_at == pytest.approx(clock.monotonic() + 2.0), "first delay is retry_wait"
    assert flusher.stats.failed_attempts == 1 and flusher.stats.last_error == "RetryableError: 503 from server"
    assert flusher.retries[chunk.chunk_id].attempts == 1

    # the second failure doubles the delay; a success clears the retry state
    output.errors.append(RetryableError("again"))
    await flusher.deliver(await buffer.dequeue())
    assert flusher._resume_at == pytest.approx(clock.monotonic() + 4.0)
    await flusher.deliver(await buffer.dequeue())
    assert output.delivered == [b'{"n":1}\n{"n":1}\n'] and chunk.chunk_id not in flusher.retries


@pytest.mark.asyncio
async def test_retry_limit_sets_the_chunk_aside_with_the_last_error(tmp_path: Path) -> None:
    errors = [RetryableError(f"timeout #{n}") for n in range(1, 4)]
    output = FakeOutput(*errors)
    flusher, buffer, clock = setup(tmp_path, output, retry_limit=3)
    name = buffer.queue[0].path.name

    for _ in range(3):
        chunk = await buffer.dequeue()
        assert chunk.path.name == name
        await flusher.deliver(chunk)
        clock.advance(10)

    dead = buffer.dead_dir / name
    assert dead.exists() and not (buffer.directory / name).exists()
    error = orjson.loads((buffer.dead_dir / f"{name}.error.json").read_bytes())
    assert error["attempts"] == 3 and error["records"] == 2 and error["output"] == "out"
    assert "timeout #3" in error["error"]
    assert flusher.stats.dead_chunks == 1 and flusher.stats.failed_attempts == 3
    assert [c.path.name for c in buffer.queue] != [name] and len(buffer.queue) == 1
    assert output.delivered == []


@pytest.mark.asyncio
async def test_retry_timeout_sets_the_chunk_aside(tmp_path: Path) -> None:
    output = FakeOutput(RetryableError("down"), RetryableError("still down"))
    flusher, buffer, clock = setup(tmp_path, output, retry_limit=100, retry_timeout=60.0)
    await flusher.deliver(await buffer.dequeue())
    clock.advance(61)
    chunk = await buffer.dequeue()
    await flusher.deliver(chunk)
    assert (buffer.dead_dir / chunk.path.name).exists()
    assert flusher.stats.dead_chunks == 1


@pytest.mark.asyncio
async def test_unrecoverable_error_sets_aside_at_once(tmp_path: Path) -> None:
    output = FakeOutput(UnrecoverableError("401 bad credentials"))
    flusher, buffer, _ = setup(tmp_path, output, retry_limit=10)
    chunk = await buffer.dequeue()
    name = chunk.path.name

    await flusher.deliver(chunk)

    assert (buffer.dead_dir / name).exists()
    error = orjson.loads((buffer.dead_dir / f"{name}.error.json").read_bytes())
    assert "401 bad credentials" in error["error"] and error["chunk_id"] == chunk.chunk_id
    assert flusher._resume_at == 0.0, "no backoff: other chunks go on"
    assert flusher.stats.dead_chunks == 1 and len(buffer.queue) == 1
    assert buffer.total_bytes == buffer.queue[0].size


@pytest.mark.asyncio
async def test_unexpected_exception_is_retryable(tmp_path: Path) -> None:
    output = FakeOutput(KeyError("bug in output"))
    flusher, buffer, _ = setup(tmp_path, output)
    chunk = await buffer.dequeue()

    await flusher.deliver(chunk)

    assert buffer.queue[0] is chunk and chunk.path.exists()
    assert not buffer.dead_dir.exists()
    assert flusher.retries[chunk.chunk_id].attempts == 1
    assert flusher.stats.last_error is not None and "KeyError" in flusher.stats.last_error
    assert flusher._resume_at > 0


@pytest.mark.asyncio
async def test_worker_delivers_every_queued_chunk_then_a_held_one(tmp_path: Path) -> None:
    # A worker deletes a delivered chunk while it writes the next queued one; once the queue is
    # empty it must count as idle, or the committer keeps a due chunk held for it forever.
    output = FakeOutput()
    flusher, buffer, clock = setup(tmp_path, output, workers=1, flush_interval=1.0)
    queued = [c.path for c in buffer.queue]
    plan = CommitPlan()
    buffer.plan(plan, NOW_KEY, 3, [frame.encode(frame.KIND_DATA, 3, 1, {"src": "a"}, b'{"n":3}\n')], 1)
    plan.apply()
    clock.advance(2.0)  # the staged chunk is due; held while the worker is busy
    loop = asyncio.get_running_loop()

    def on_flusher_idle() -> None:  # as the committer does: enqueue at its next step, not inside dequeue
        loop.call_soon(buffer.enqueue_due)

    buffer.on_flusher_idle = on_flusher_idle

    task = asyncio.create_task(flusher.run())
    try:
        async with asyncio.timeout(10):
            await buffer.wait_drained()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert output.delivered == [b'{"n":1}\n{"n":1}\n', b'{"n":2}\n{"n":2}\n', b'{"n":3}\n']
    assert not any(p.exists() for p in queued) and not buffer.in_flight and not buffer.staged
