"""ParsePool: worker processes give the committer exactly what the event loop's processor gives, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import zlib
from collections.abc import Callable

import orjson
import pytest

from pipeline.clock import FakeClock
from pipeline.config import EnrichConfig
from pipeline.runtime.committer import END, EndOfInput
from pipeline.runtime.parse_pool import IN_BYTES, MIN_WORKER_BYTES, ParsePool
from pipeline.sources.base import LineBatch
from pipeline.transforms.records import ProcessedBatch, RecordProcessor

WALL = 1_795_000_000.0
HOUR = 3600


def make_processor(widths: set[int] | None = None) -> RecordProcessor:
    return RecordProcessor(EnrichConfig(hostname="host-1", tag_key="tag"), widths or {HOUR, 60}, FakeClock(WALL))


def make_batch(data: bytes, start: int = 1000, key: str = "7:42") -> LineBatch:
    return LineBatch("agent", "ai.chat", key, "/logs/agent.jsonl", start, start + len(data), data, None)


def blocks() -> list[bytes]:
    """Blocks that take every path: spliced, re-serialised, bad JSON, not an object, two windows, empty."""
    plain = b"".join(orjson.dumps({"request_id": f"r{i}", "prompt": "h\u00e9llo " * (i % 7),
                                   "timestamp": WALL - 40 + i % 50}) + b"\n" for i in range(2000))
    mixed = (b'{"prompt": "a", "hostname": "theirs"}\n{}\nnot json\n[1, 2]\n\n'
             b'{"prompt": "b" , "tokens": 3}\n{"x": 1} trailing\n') * 2000
    spanning = b"".join(orjson.dumps({"i": i, "timestamp": WALL - 3600 * (i % 2)}) + b"\n" for i in range(5000))
    few = b'{"prompt": "a steady writer\'s line"}\n'  # under MIN_WORKER_BYTES: parsed on the loop
    huge = b'{"prompt": "' + b"x" * (IN_BYTES + 10) + b'"}\n'
    assert len(plain) > MIN_WORKER_BYTES and len(mixed) > MIN_WORKER_BYTES and len(spanning) > MIN_WORKER_BYTES
    return [plain, mixed, spanning, b"", huge, few, plain]


def flatten(item: ProcessedBatch) -> tuple[dict[int, dict[int, tuple[bytes, list[int]]]], list[dict[str, object]], int]:
    groups = {width: {key: (b"".join(g.lines), g.offsets) for key, g in windows.items()}
              for width, windows in item.groups.items()}
    return groups, item.dead, item.records


async def through_pool(processor: RecordProcessor, batches: list[LineBatch], workers: int) -> list[ProcessedBatch]:
    pool = ParsePool(processor, workers)
    pool.start()
    inbox: asyncio.Queue[LineBatch | EndOfInput] = asyncio.Queue()
    outbox: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue()
    for queued in batches:
        inbox.put_nowait(queued)
    inbox.put_nowait(END)
    published: list[ProcessedBatch] = []
    try:
        await asyncio.wait_for(pool.run(inbox, outbox, published.append), 60)
    finally:
        pool.close()
    out: list[ProcessedBatch] = []
    while not isinstance(done := outbox.get_nowait(), EndOfInput):
        out.append(done)
    assert published == out
    assert pool.blocks >= 3, "the plain and mixed blocks were parsed by the workers"
    return out


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 2])
async def test_workers_give_what_the_loop_gives_in_order(workers: int) -> None:
    data = blocks()
    start = [1000 + 10_000_000 * n for n in range(len(data))]
    expected = [flatten(make_processor().process(make_batch(d, s))) for d, s in zip(data, start, strict=True)]

    got = await through_pool(make_processor(), [make_batch(d, s) for d, s in zip(data, start, strict=True)], workers)

    assert [item.batch.start for item in got] == start, "batches are handed on in the order they came"
    assert [flatten(item) for item in got] == expected
    assert expected[1][1], "the mixed block has dead letters, with their reasons"
    assert all(item.batch.data == b"" for item in got)
    for item in got:  # a worker's group carries its payload's CRC, which the frame's combines
        for windows in item.groups.values():
            assert all(g.crc is None or g.crc == zlib.crc32(b"".join(g.lines)) for g in windows.values())
    assert any(g.crc is not None for item in got for w in item.groups.values() for g in w.values())


@pytest.mark.asyncio
async def test_many_blocks_keep_their_order_across_workers() -> None:
    lines = [orjson.dumps({"n": n, "timestamp": WALL}) + b"\n" for n in range(20_000)]
    batches = [make_batch(b"".join(lines[i : i + 4000]), start=i) for i in range(0, len(lines), 4000)]

    got = await through_pool(make_processor(), batches, 2)

    numbers = [orjson.loads(line)["n"] for item in got for line in b"".join(item.groups[HOUR][
        int(WALL) // HOUR * HOUR].lines).splitlines()]
    assert numbers == list(range(20_000))


@pytest.mark.asyncio
async def test_a_worker_that_dies_is_replaced_by_the_loop_and_nothing_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    data = [b'{"a": %d}\n' % n * (MIN_WORKER_BYTES // 8) for n in range(6)]
    expected = [flatten(make_processor().process(make_batch(d, 1000 * n))) for n, d in enumerate(data)]
    pool = ParsePool(make_processor(), 1)
    pool.start()
    try:
        os.kill(pool.workers[0].process.pid, signal.SIGKILL)
        pool.workers[0].process.wait()
        inbox: asyncio.Queue[LineBatch | EndOfInput] = asyncio.Queue()
        outbox: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue()
        for n, d in enumerate(data):
            inbox.put_nowait(make_batch(d, 1000 * n))
        inbox.put_nowait(END)
        await asyncio.wait_for(pool.run(inbox, outbox, lambda _: None), 30)
    finally:
        pool.close()
    got = []
    while not isinstance(done := outbox.get_nowait(), EndOfInput):
        got.append(flatten(done))
    assert got == expected, "every block parsed once, in order, by the daemon itself"
    assert pool.blocks == 0 and pool.inline == len(data)
    assert "failed (exit code -9" in caplog.text and "parse worker" in caplog.text


def plain_blocks(count: int, per_block: int = 3000) -> list[bytes]:
    return [b"".join(orjson.dumps({"n": n, "timestamp": WALL}) + b"\n"
                     for n in range(b * per_block, (b + 1) * per_block)) for b in range(count)]


async def until(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition`` on the loop (the pool's callbacks run meanwhile) until it holds, for 30 s at most."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def run_pool(pool: ParsePool, batches: list[LineBatch]) -> list[ProcessedBatch]:
    inbox: asyncio.Queue[LineBatch | EndOfInput] = asyncio.Queue()
    outbox: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue()
    for queued in batches:
        inbox.put_nowait(queued)
    inbox.put_nowait(END)
    await asyncio.wait_for(pool.run(inbox, outbox, lambda _: None), 60)
    out = []
    while not isinstance(done := outbox.get_nowait(), EndOfInput):
        out.append(done)
    return out


@pytest.mark.asyncio
async def test_the_last_worker_dying_with_blocks_in_hand_and_more_waiting_loses_nothing() -> None:
    data = plain_blocks(6)
    expected = [flatten(make_processor().process(make_batch(d, 10**7 * n))) for n, d in enumerate(data)]
    pool = ParsePool(make_processor(), 1)
    pool.start()
    victim = pool.workers[0].process.pid
    os.kill(victim, signal.SIGSTOP)  # takes two blocks, answers none; the third waits for a slot
    try:
        running = asyncio.create_task(run_pool(pool, [make_batch(d, 10**7 * n) for n, d in enumerate(data)]))
        await until(lambda: len(pool.workers[0].pending) == 2, "two blocks in the stopped worker's hands")
        os.kill(victim, signal.SIGKILL)
        got = await running
    finally:
        pool.close()
    assert [flatten(item) for item in got] == expected
    assert pool.stats()["alive"] == 0 and pool.inline == len(data)


@pytest.mark.asyncio
async def test_answers_out_of_order_are_handed_on_in_order() -> None:
    data = plain_blocks(12)
    pool = ParsePool(make_processor(), 2)
    pool.start()
    slow = pool.workers[0].process.pid
    os.kill(slow, signal.SIGSTOP)  # the other worker answers its blocks first
    try:
        running = asyncio.create_task(run_pool(pool, [make_batch(d, 10**7 * n) for n, d in enumerate(data)]))
        await until(lambda: pool.workers[0].pending and pool.blocks >= 1, "the other worker answering first")
        os.kill(slow, signal.SIGCONT)
        got = await running
    finally:
        pool.close()
    numbers = [orjson.loads(line)["n"] for item in got for g in item.groups[HOUR].values()
               for line in b"".join(g.lines).splitlines()]
    assert numbers == list(range(12 * 3000))
    assert pool.blocks == len(data), "every block was parsed by a worker"


@pytest.mark.asyncio
async def test_a_block_spanning_windows_is_split_by_the_worker() -> None:
    block = b"".join(orjson.dumps({"i": i, "timestamp": WALL + 1800 * (i % 3)}) + b"\n" for i in range(5000))
    expected = flatten(make_processor().process(make_batch(block)))
    assert len(expected[0][HOUR]) == 2 and len(expected[0][60]) == 3
    pool = ParsePool(make_processor(), 1)
    pool.start()
    try:
        (got,) = await run_pool(pool, [make_batch(block)])
    finally:
        pool.close()
    assert flatten(got) == expected and pool.blocks == 1
    for windows in got.groups.values():
        assert all(g.crc == zlib.crc32(b"".join(g.lines)) for g in windows.values())


def message_batch(lines: list[bytes], offsets: list[int], source: str = "bus") -> LineBatch:
    """A kafka source's batch: one partition's messages, one per line, with the messages' own offsets."""
    data = b"\n".join([*lines, b""])
    return LineBatch(source, "ai.chat", "agents-1", "kafka://agents/1", offsets[0], offsets[-1] + 1, data, None,
                     offsets=offsets)


@pytest.mark.asyncio
async def test_a_batch_with_its_own_offsets_gets_them_from_the_worker_as_from_the_loop() -> None:
    # Kafka offsets with gaps (a transaction's commit markers take offsets too), a bad message and two windows.
    lines = [orjson.dumps({"n": n, "timestamp": WALL + 1800 * (n % 3)}) for n in range(3000)]
    lines[1234] = b"not json"
    offsets = [50_000 + 3 * n + (n // 1000) for n in range(3000)]

    def batch() -> LineBatch:
        return message_batch(lines, offsets)

    expected = flatten(make_processor().process(batch()))
    pool = ParsePool(make_processor(), 1)
    pool.start()
    try:
        (got,) = await run_pool(pool, [batch()])
    finally:
        pool.close()
    assert pool.blocks == 1, "the worker parsed it"
    assert flatten(got) == expected
    by_offset = {offset: orjson.loads(line)["n"] for windows in got.groups[HOUR].values()
                 for line, offset in zip(b"".join(windows.lines).splitlines(), windows.offsets, strict=True)}
    assert by_offset == {offsets[n]: n for n in range(3000) if n != 1234}, "each record keeps its message's offset"
    (dead,) = got.dead
    assert dead["offset"] == offsets[1234] and dead["id"] == f"bus:agents-1:{offsets[1234]}"


@pytest.mark.asyncio
async def test_the_workers_ignore_stop_signals_and_leave_when_told() -> None:
    pool = ParsePool(make_processor(), 1)
    pool.start()
    try:
        await run_pool(pool, [make_batch(plain_blocks(1)[0])])  # the worker is up and serving
        os.kill(pool.workers[0].process.pid, signal.SIGTERM)  # systemd signals the whole control group
        os.kill(pool.workers[0].process.pid, signal.SIGINT)
        got = await run_pool(pool, [make_batch(d, 10**7 * n) for n, d in enumerate(plain_blocks(3))])
        assert pool.blocks == 4 and len(got) == 3
        process = pool.workers[0].process
    finally:
        pool.close()
    assert process.returncode == 0
