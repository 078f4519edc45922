"""PackedForward entries decoded by a parse worker (``parse_workers`` > 0) give what the forward source's own
decoding on the event loop gives: the same bytes, offsets, record ids, dead letters and counts."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import struct
import zlib
from types import SimpleNamespace
from typing import Any

import msgpack
import orjson
import pytest

from pipeline.clock import FakeClock
from pipeline.config import EnrichConfig
from pipeline.outputs.records import document_id
from pipeline.runtime.committer import END, EndOfInput
from pipeline.runtime.parse_pool import MIN_WORKER_BYTES, ParsePool
from pipeline.sources.base import LineBatch
from pipeline.sources.forward.codec import decode
from pipeline.sources.forward.source import Connection
from pipeline.transforms.records import ProcessedBatch, RecordProcessor

WALL = 1_795_000_000.0
HOUR = 3600
LIMIT = 8 << 20


def make_processor() -> RecordProcessor:
    return RecordProcessor(EnrichConfig(hostname="host-1", tag_key="tag"), {HOUR, 60}, FakeClock(WALL))


def event_time(seconds: float) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", int(seconds), int(seconds % 1 * 1e9)))


def entries(count: int, odd: bool = True) -> list[list[Any]]:
    """Entries that take every path: EventTime and integer times, a record's own time key, windows on both sides
    of an hour, a key the enricher adds, bin values, non-string keys, and (``odd``) entries that are not maps and
    a record that cannot be stored as JSON."""
    out: list[list[Any]] = []
    for n in range(count):
        record: dict[Any, Any] = {"n": n, "prompt": "h\u00e9llo " * (n % 9), "tokens": [n, n + 1],
                                  "trace": os.urandom(64).hex()}  # gzipped, still large enough for a worker
        when: object = event_time(WALL - 1800 + n * 0.37)
        if n % 5 == 1:
            when = int(WALL) - 7200 + n  # an integer time, the hour before
        if n % 7 == 2:
            record["timestamp"] = "2026-11-30T10:00:00Z"  # its own time key wins
        if n % 11 == 3:
            record["hostname"] = "theirs"  # the enricher's key: added fields win
        if n % 13 == 4:
            record["blob"] = b"\xff bytes"
        if n % 17 == 5:
            record[7] = "a non-string key"
        out.append([when, record])
    if odd:
        out[10] = [event_time(WALL), "not a map"]
        out[20] = [event_time(WALL), [1, 2]]
        out[30] = [event_time(WALL), {b"bin key": 1}]  # no JSON for it: dead-lettered, as on the loop
    return out


def message(items: list[list[Any]], chunk: str, compressed: bool = False) -> list[Any]:
    """A decoded PackedForward message, as the connection's unpacker hands it on."""
    raw = b"".join(msgpack.packb(item) for item in items)
    options: dict[str, Any] = {"chunk": chunk, "size": len(items)}
    if compressed:
        raw, options["compressed"] = gzip.compress(raw), "gzip"
    return ["app.x", raw, options]


def connection(defer: bool) -> Connection:
    """A connection of a forward source, without a socket: only ``_batch`` is called."""
    config = SimpleNamespace(message_limit_bytes=32 << 20, chunk_limit_bytes=LIMIT, tag=None)
    source = SimpleNamespace(name="fwd", config=config, clock=FakeClock(WALL), time_key="timestamp",
                             journal=object(), defer=defer, window=SimpleNamespace(abandon=lambda chunk: None),
                             stats=SimpleNamespace(bad_input=0, records=0))
    conn = Connection(source, None, SimpleNamespace(close=lambda: None), "10.0.0.7:5000", None)  # type: ignore[arg-type]
    return conn


def batch_of(obj: list[Any], defer: bool, conn: Connection | None = None) -> LineBatch:
    conn = conn or connection(defer)
    return conn._batch(decode(obj, LIMIT, defer))


def flatten(item: ProcessedBatch) -> dict[str, Any]:
    groups = {width: {key: (b"".join(g.lines), g.offsets) for key, g in windows.items()}
              for width, windows in item.groups.items()}
    return {"groups": groups, "dead": item.dead, "records": item.records, "end": item.batch.end}


def ids(item: ProcessedBatch) -> list[str]:
    """The Elasticsearch ids of the batch's records, as the output derives them from the frames."""
    return sorted(document_id(orjson.loads(line), "request_id", "timestamp", item.batch.key, offset)
                  for windows in item.groups.values() for g in windows.values()
                  for line, offset in zip(b"".join(g.lines).splitlines(), g.offsets, strict=True))


async def through_pool(batches: list[LineBatch], workers: int, kill: bool = False) -> tuple[list[ProcessedBatch],
                                                                                             ParsePool]:
    pool = ParsePool(make_processor(), workers)
    pool.start()
    inbox: asyncio.Queue[LineBatch | EndOfInput] = asyncio.Queue()
    outbox: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue()
    try:
        if kill:
            for worker in pool.workers:
                os.kill(worker.process.pid, signal.SIGKILL)
                worker.process.wait()
        for queued in batches:
            inbox.put_nowait(queued)
        inbox.put_nowait(END)
        await asyncio.wait_for(pool.run(inbox, outbox, lambda _: None), 60)
    finally:
        pool.close()
    out = []
    while not isinstance(done := outbox.get_nowait(), EndOfInput):
        out.append(done)
    return out, pool


def messages() -> list[list[Any]]:
    big = entries(1500)
    plain, zipped = message(big, "c-plain"), message(big, "c-gzip", compressed=True)
    assert len(plain[1]) > MIN_WORKER_BYTES and len(zipped[1]) > MIN_WORKER_BYTES, "large enough for a worker"
    return [plain, zipped, message(entries(40), "c-small"), message(entries(2000, odd=False), "c-clean")]


def test_the_loop_gives_the_same_batches_whether_the_source_or_the_processor_decodes() -> None:
    for obj in messages():
        now, later = batch_of(obj, defer=False), batch_of(obj, defer=True)
        assert later.packed is not None and later.records is None and not later.dead
        expected, got = make_processor().process(now), make_processor().process(later)
        assert flatten(got) == flatten(expected)
        assert later.packed is None, "decoded once"


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 2])
async def test_workers_give_the_same_bytes_offsets_ids_and_dead_letters_in_order(workers: int) -> None:
    objs = messages() * 2
    expected = [make_processor().process(batch_of(obj, defer=False)) for obj in objs]
    got, pool = await through_pool([batch_of(obj, defer=True) for obj in objs], workers)
    assert [flatten(item) for item in got] == [flatten(item) for item in expected]
    assert [ids(item) for item in got] == [ids(item) for item in expected]
    assert pool.blocks == 6 and pool.inline == 2, "the small message stays on the loop"
    first = expected[0]
    reasons = [d["reason"] for d in first.dead]
    assert reasons[:2] == ["record is not a map"] * 2 and reasons[2].startswith("record cannot be stored as JSON")
    assert all(d["peer"] == "10.0.0.7:5000" and d["path"] == "forward://10.0.0.7:5000" for d in first.dead)
    assert first.records == 1500 - 3 and first.batch.end == 1500
    for item in got:
        for windows in item.groups.values():  # the frames' CRC comes from the worker
            assert all(g.crc is None or g.crc == zlib.crc32(b"".join(g.lines)) for g in windows.values())


@pytest.mark.asyncio
async def test_the_acks_count_the_stored_records() -> None:
    conn = connection(defer=True)
    committed: list[tuple[str | None, int]] = []
    conn._committed = lambda chunk, records: committed.append((chunk, records))  # type: ignore[method-assign]
    batches = [batch_of(obj, defer=True, conn=conn) for obj in messages()]
    got, _ = await through_pool(batches, 1)
    for item in got:
        assert item.batch.on_commit is not None
        item.batch.on_commit()
    assert committed == [("c-plain", 1497), ("c-gzip", 1497), ("c-small", 37), ("c-clean", 2000)]


def bad_messages() -> list[tuple[list[Any], str]]:
    good = b"".join(msgpack.packb(item) for item in entries(1500, odd=False))
    cut = ["app.x", good[:-7], {"chunk": "c-cut"}]
    garbage = ["app.x", b"\xc1" * (MIN_WORKER_BYTES + 10), {"chunk": "c-garbage"}]
    not_entries = ["app.x", msgpack.packb({"a": 1}) * 20_000, {"chunk": "c-shape"}]
    zipped = gzip.compress(good)
    bad_zip = ["app.x", zipped[: len(zipped) // 2], {"chunk": "c-zip", "compressed": "gzip"}]
    bomb = ["app.x", gzip.compress(b"\x90" * (LIMIT + 1)), {"chunk": "c-bomb", "compressed": "gzip"}]
    # A map keyed by an array: msgpack cannot give it as a dict (unhashable list).
    array_key = ["app.x", b"\x92\xd7\x00" + bytes(8) + b"\x81\x91\x01\x01" + good, {"chunk": "c-key"}]
    return [(cut, "cut short"), (garbage, "bad PackedForward entries"), (not_entries, "an entry must be"),
            (bad_zip, "gzip data cut short"), (bomb, "exceeds chunk_limit_bytes"), (array_key, "unhashable")]


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [0, 1])
async def test_bad_entries_store_nothing_and_close_the_connection_without_an_ack(
        workers: int, caplog: pytest.LogCaptureFixture) -> None:
    cases = bad_messages()
    rejected: list[tuple[str, str]] = []
    conns = []
    batches = []
    for obj, _ in cases:
        conn = connection(defer=True)
        conn._rejected = lambda chunk, reason: rejected.append((str(chunk), reason))  # type: ignore[method-assign]
        conns.append(conn)
        batches.append(batch_of(obj, defer=True, conn=conn))
    good = batch_of(messages()[0], defer=True)
    if workers:
        got, _ = await through_pool([*batches, good], workers)
    else:
        got = [make_processor().process(b) for b in [*batches, good]]
    reasons = dict(rejected)  # a worker's answer may come after a message the loop decoded at once
    assert sorted(reasons) == sorted(obj[2]["chunk"] for obj, _ in cases)
    for obj, expected in cases:
        assert expected in reasons[obj[2]["chunk"]]
    for item in got[:-1]:
        assert item.records == 0 and not item.dead and item.batch.on_commit is None and item.batch.journal is None
        assert all(not windows for windows in item.groups.values())
    assert got[-1].records == 1497, "the next message is stored"
    assert "parse worker" not in caplog.text, "a client's bad bytes are no worker failure"


def test_a_rejected_message_closes_its_connection_and_is_not_acked() -> None:
    conn = connection(defer=True)
    closed: list[bool] = []
    abandoned: list[str] = []
    conn.writer = SimpleNamespace(close=lambda: closed.append(True))  # type: ignore[assignment]
    conn.source.window = SimpleNamespace(abandon=abandoned.append)  # type: ignore[assignment]
    batch = batch_of(bad_messages()[0][0], defer=True, conn=conn)
    make_processor().process(batch)
    assert closed == [True] and abandoned == ["c-cut"] and conn.rejected
    assert conn.source.stats.bad_input == 1


@pytest.mark.asyncio
async def test_dead_workers_leave_their_messages_to_the_loop_and_nothing_changes(
        caplog: pytest.LogCaptureFixture) -> None:
    objs = messages()
    expected = [flatten(make_processor().process(batch_of(obj, defer=False))) for obj in objs]
    got, pool = await through_pool([batch_of(obj, defer=True) for obj in objs], 2, kill=True)
    assert [flatten(item) for item in got] == expected
    assert pool.blocks == 0 and pool.inline == len(objs)
    assert "failed (exit code -9" in caplog.text


@pytest.mark.asyncio
async def test_a_worker_killed_with_messages_in_hand_loses_none() -> None:
    objs = [message(entries(1500), f"c-{n}") for n in range(6)]
    expected = [flatten(make_processor().process(batch_of(obj, defer=False))) for obj in objs]
    pool = ParsePool(make_processor(), 1)
    pool.start()
    victim = pool.workers[0].process.pid
    os.kill(victim, signal.SIGSTOP)  # takes two messages, answers none; the third waits for a slot
    inbox: asyncio.Queue[LineBatch | EndOfInput] = asyncio.Queue()
    outbox: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue()
    for obj in objs:
        inbox.put_nowait(batch_of(obj, defer=True))
    inbox.put_nowait(END)
    try:
        running = asyncio.create_task(pool.run(inbox, outbox, lambda _: None))
        for _ in range(3000):
            if len(pool.workers[0].pending) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(pool.workers[0].pending) == 2
        os.kill(victim, signal.SIGKILL)
        await asyncio.wait_for(running, 60)
    finally:
        pool.close()
    got = []
    while not isinstance(done := outbox.get_nowait(), EndOfInput):
        got.append(flatten(done))
    assert got == expected and pool.inline == len(objs)
