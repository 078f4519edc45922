"""FileBuffer: when staged chunks are queued, what resume rebuilds after a crash, and delivery bookkeeping."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState
from pipeline.buffer.file_buffer import CommitPlan, FileBuffer
from pipeline.buffer.replay import replay_dead_chunks
from pipeline.clock import FakeClock
from pipeline.config import BufferConfig

HOUR = 3600
WALL = 1_795_000_000.0
NOW_KEY = int(WALL) // HOUR * HOUR  # the window the fake clock starts in
WINDOW_END = NOW_KEY + HOUR + 60  # default timekey_wait is 60 s


def lines(n: int, first: int = 0, pad: int = 0) -> list[bytes]:
    return [orjson.dumps({"i": i, "pad": "x" * pad}) + b"\n" for i in range(first, first + n)]


def data_frame(seq: int, records: list[bytes], end: int = 0, key: str = "1:2", path: str = "/logs/a.jsonl") -> bytes:
    meta = {"src": "agent", "file": key, "path": path, "end": end, "offs": list(range(len(records)))}
    return frame.encode(frame.KIND_DATA, seq, len(records), meta, b"".join(records))


def commit(buffer: FileBuffer, seq: int, timekey: int, records: list[bytes], **meta: Any) -> None:
    """What the committer does for one batch routed to one buffer: plan, then write and fsync."""
    plan = CommitPlan()
    buffer.plan(plan, timekey, seq, [data_frame(seq, records, **meta)], len(records))
    plan.apply()


def make(tmp_path: Path, clock: FakeClock | None = None, resume_seq: int | None = 0, **cfg: Any) -> FileBuffer:
    buffer = FileBuffer("out", tmp_path / "buffer" / "out", BufferConfig(**cfg), clock or FakeClock(WALL))
    buffer.resume(resume_seq)
    return buffer


def reopen(buffer: FileBuffer, committed: int | None, **cfg: Any) -> tuple[FileBuffer, Any]:
    """A fresh buffer on the same directory, as after a restart."""
    for chunk in [*buffer.staged.values(), *buffer.queue]:
        chunk.close()
    again = FileBuffer("out", buffer.directory, BufferConfig(**cfg), FakeClock(WALL))
    return again, again.resume(committed)


def files(buffer: FileBuffer) -> list[str]:
    return sorted(p.name for p in buffer.directory.iterdir() if p.is_file())


def records_in(path: Path) -> list[dict[str, Any]]:
    chunk_parsed = Chunk.parse_name(path)
    assert chunk_parsed is not None
    chunk = Chunk(path.parent, chunk_parsed[0], chunk_parsed[1], chunk_parsed[2])
    return [orjson.loads(line) for payload in chunk.payloads() for line in payload.splitlines()]


def only_chunk_path(buffer: FileBuffer) -> Path:
    (name,) = files(buffer)
    return buffer.directory / name


# -- staging and enqueueing ------------------------------------------------------------


def test_records_are_readable_from_the_staged_chunk(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    commit(buffer, 2, NOW_KEY, lines(3, first=2))

    (chunk,) = buffer.staged.values()
    assert chunk.records == 5
    assert chunk.size == chunk.path.stat().st_size == buffer.total_bytes
    assert [r["i"] for r in records_in(chunk.path)] == [0, 1, 2, 3, 4]
    assert chunk.path.name.startswith(f"{NOW_KEY}.") and chunk.path.name.endswith(".staged")


def test_one_chunk_per_time_window(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(1))
    commit(buffer, 2, NOW_KEY - HOUR, lines(1))
    commit(buffer, 3, NOW_KEY, lines(1))
    assert sorted(buffer.staged) == [NOW_KEY - HOUR, NOW_KEY]
    assert buffer.staged[NOW_KEY].records == 2


def test_size_limit_enqueues(tmp_path: Path) -> None:
    buffer = make(tmp_path, chunk_limit_bytes=1024)
    commit(buffer, 1, NOW_KEY, lines(1, pad=400))
    assert buffer.enqueue_due() == 0, "below the size limit and nothing expired"
    commit(buffer, 2, NOW_KEY, lines(1, pad=700))

    assert buffer.enqueue_due() == 1
    assert not buffer.staged
    (chunk,) = buffer.queue
    assert chunk.state is ChunkState.QUEUED and chunk.path.exists() and chunk.path.suffix == ".queued"
    assert chunk.records == 2


def test_full_chunk_is_sealed_and_next_frame_starts_a_new_chunk(tmp_path: Path) -> None:
    buffer = make(tmp_path, chunk_limit_bytes=1024)
    plan = CommitPlan()
    buffer.plan(plan, NOW_KEY, 1, [data_frame(1, lines(1, pad=1100))], 1)
    buffer.plan(plan, NOW_KEY, 1, [data_frame(1, lines(1, first=1))], 1)
    plan.apply()
    assert buffer.pending_chunks() == 2
    assert buffer.enqueue_due() == 1, "the sealed chunk goes to the queue, the new one stays staged"
    assert buffer.queue[0].records == 1 and buffer.staged[NOW_KEY].records == 1
    assert buffer.queue[0].chunk_id != buffer.staged[NOW_KEY].chunk_id
    assert [r["i"] for r in records_in(buffer.staged[NOW_KEY].path)] == [1]


def test_record_limit_enqueues(tmp_path: Path) -> None:
    buffer = make(tmp_path, chunk_limit_records=3)
    commit(buffer, 1, NOW_KEY, lines(2))
    assert buffer.enqueue_due() == 0
    commit(buffer, 2, NOW_KEY, lines(1, first=2))
    assert buffer.enqueue_due() == 1
    assert buffer.queue[0].records == 3


def test_flush_interval_enqueues_in_interval_mode(tmp_path: Path) -> None:
    clock = FakeClock(WALL)
    buffer = make(tmp_path, clock, flush_mode="interval", flush_interval=5.0)
    commit(buffer, 1, NOW_KEY, lines(1))
    assert buffer.seconds_until_due() == pytest.approx(5.0)

    clock.advance(4.9)
    assert buffer.enqueue_due() == 0
    assert buffer.seconds_until_due() == pytest.approx(0.1)
    clock.advance(0.1)
    assert buffer.enqueue_due() == 1
    assert buffer.seconds_until_due() is None


def test_lazy_mode_waits_for_the_window_to_close(tmp_path: Path) -> None:
    clock = FakeClock(WALL)
    buffer = make(tmp_path, clock, flush_mode="lazy", flush_interval=5.0)
    commit(buffer, 1, NOW_KEY, lines(1))
    assert buffer.seconds_until_due() == pytest.approx(WINDOW_END - WALL)

    clock.advance(60)
    assert buffer.enqueue_due() == 0, "lazy mode ignores flush_interval"
    clock.set_wall(WINDOW_END - 0.5)
    assert buffer.enqueue_due() == 0, "timekey_wait still running"
    clock.set_wall(WINDOW_END)
    assert buffer.enqueue_due() == 1


def test_late_records_for_a_closed_window_are_enqueued_at_once(tmp_path: Path) -> None:
    buffer = make(tmp_path, flush_mode="lazy")
    commit(buffer, 1, NOW_KEY - 2 * HOUR, lines(1))
    assert buffer.seconds_until_due() == 0.0
    assert buffer.enqueue_due() == 1


def test_monotonic_backstop_when_the_wall_clock_jumps_back(tmp_path: Path) -> None:
    clock = FakeClock(WALL)
    buffer = make(tmp_path, clock, flush_mode="lazy")
    commit(buffer, 1, NOW_KEY, lines(1))
    clock.set_wall(WALL - 86_400)  # NTP steps the clock back a day

    assert buffer.seconds_until_due() == pytest.approx(HOUR + 60), "bounded by the monotonic age, not the wall"
    clock.advance(HOUR + 59)
    assert buffer.enqueue_due() == 0
    clock.advance(1)
    assert buffer.enqueue_due() == 1


def test_force_enqueues_everything(tmp_path: Path) -> None:
    buffer = make(tmp_path, flush_mode="lazy")
    commit(buffer, 1, NOW_KEY, lines(1))
    commit(buffer, 2, NOW_KEY + HOUR, lines(1))
    assert buffer.enqueue_due() == 0
    assert buffer.enqueue_due(force=True) == 2
    assert not buffer.staged and len(buffer.queue) == 2
    assert all(name.endswith(".queued") for name in files(buffer))


@pytest.mark.asyncio
async def test_a_due_chunk_keeps_filling_while_the_flusher_is_busy_and_goes_when_it_asks(tmp_path: Path) -> None:
    clock = FakeClock(WALL)
    buffer = make(tmp_path, clock, flush_interval=1.0, chunk_limit_bytes=10_000)
    idle_calls: list[int] = []
    buffer.on_flusher_idle = lambda: idle_calls.append(1)
    commit(buffer, 1, NOW_KEY, lines(1))
    clock.advance(1.0)
    assert buffer.enqueue_due() == 1
    first = await buffer.dequeue()  # the only flusher (workers = 1) is now busy with it

    commit(buffer, 2, NOW_KEY, lines(1))
    clock.advance(1.0)
    assert buffer.enqueue_due() == 0, "due, but no flusher could take it any sooner"
    assert buffer.seconds_until_due() is None, "the committer waits for the flusher, it does not spin"
    commit(buffer, 3, NOW_KEY, lines(1))
    [held] = buffer.staged.values()
    assert held.records == 2, "the held chunk kept filling"

    buffer.ack(first)
    waiter = asyncio.create_task(buffer.dequeue())
    await asyncio.sleep(0)
    assert idle_calls and not waiter.done(), "the idle flusher told the committer"
    assert buffer.enqueue_due() == 1
    assert await asyncio.wait_for(waiter, 1) is held


@pytest.mark.asyncio
async def test_a_full_chunk_is_enqueued_even_while_the_flusher_is_busy(tmp_path: Path) -> None:
    buffer = make(tmp_path, chunk_limit_records=2)
    commit(buffer, 1, NOW_KEY, lines(2))
    buffer.enqueue_due()
    await buffer.dequeue()
    commit(buffer, 2, NOW_KEY, lines(2))
    assert buffer.enqueue_due() == 1 and len(buffer.queue) == 1


# -- resume ------------------------------------------------------------------------------


def test_resume_cuts_a_torn_tail_and_keeps_the_frames_before_it(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    commit(buffer, 2, NOW_KEY, lines(3, first=2))
    path = only_chunk_path(buffer)
    good_size = path.stat().st_size
    half = data_frame(3, lines(4, first=5))
    with path.open("ab") as handle:
        handle.write(half[: len(half) // 2])

    again, report = reopen(buffer, committed=2)

    assert report.torn_tails == 1 and report.records == 5 and not report.quarantined
    assert path.stat().st_size == good_size
    assert [r["i"] for r in records_in(path)] == [0, 1, 2, 3, 4]
    (chunk,) = again.staged.values()
    assert chunk.records == 5 and again.total_bytes == good_size

    # appending after the cut gives a clean file again
    commit(again, 3, NOW_KEY, lines(1, first=5))
    assert [r["i"] for r in records_in(path)] == [0, 1, 2, 3, 4, 5]


def test_resume_cuts_a_torn_header_prefix(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    path = only_chunk_path(buffer)
    with path.open("ab") as handle:
        handle.write(frame.MAGIC + b"D")  # the crash hit inside the next frame's fixed header

    _, report = reopen(buffer, committed=1)

    assert report.torn_tails == 1 and report.records == 2
    assert [r["i"] for r in records_in(path)] == [0, 1]


def test_resume_rolls_back_uncommitted_frames_of_staged_chunks(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    commit(buffer, 2, NOW_KEY, lines(3, first=2))
    commit(buffer, 3, NOW_KEY, lines(1, first=5))
    commit(buffer, 2, NOW_KEY + HOUR, lines(4, first=10))  # a chunk created by an uncommitted commit
    kept = buffer.staged[NOW_KEY].path
    created_uncommitted = buffer.staged[NOW_KEY + HOUR].path

    again, report = reopen(buffer, committed=1)

    assert report.records == 2
    assert report.rolled_back_frames >= 3, "seq 2 and 3 in the first chunk, seq 2 in the second"
    assert [r["i"] for r in records_in(kept)] == [0, 1]
    assert not created_uncommitted.exists(), "a chunk left without data frames is deleted"
    assert list(again.staged) == [NOW_KEY]
    assert again.staged[NOW_KEY].records == 2
    assert again.total_bytes == kept.stat().st_size
    assert report.max_seq == 1


def test_resume_without_committed_seq_rolls_nothing_back(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    commit(buffer, 7, NOW_KEY, lines(3, first=2))

    again, report = reopen(buffer, committed=None)

    assert report.rolled_back_frames == 0 and report.records == 5
    assert again.staged[NOW_KEY].records == 5


def test_resume_never_rolls_back_queued_chunks(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 5, NOW_KEY, lines(2))
    buffer.enqueue_due(force=True)

    again, report = reopen(buffer, committed=1)

    assert report.rolled_back_frames == 0
    assert [c.records for c in again.queue] == [2]


@pytest.mark.parametrize(("damaged_frame", "kept"), [(1, []), (2, [0, 1])])
def test_resume_quarantines_mid_file_damage_and_keeps_frames_before_it(
    tmp_path: Path, damaged_frame: int, kept: list[int]
) -> None:
    buffer = make(tmp_path)
    for seq in (1, 2, 3):
        commit(buffer, seq, NOW_KEY, lines(2, first=(seq - 1) * 2))
    path = only_chunk_path(buffer)
    (chunk,) = buffer.staged.values()
    sizes = [f.size for f in _all_frames(path)]
    assert len(sizes) == 4  # header + three data frames
    damaged = bytearray(path.read_bytes())
    damaged[sum(sizes[: damaged_frame + 1]) - 3] ^= 0xFF  # a payload byte of that data frame
    path.write_bytes(bytes(damaged))

    again, report = reopen(buffer, committed=3)

    quarantined = buffer.quarantine_dir / path.name
    assert report.quarantined == [str(quarantined)]
    assert quarantined.read_bytes() == bytes(damaged), "the original file is kept for the operator"
    assert report.torn_tails == 0
    if kept:
        assert [r["i"] for r in records_in(path)] == kept
        assert again.staged[NOW_KEY].records == len(kept)
        assert again.total_bytes == path.stat().st_size == sum(sizes[:damaged_frame])
    else:
        assert not path.exists() and not again.staged
        assert again.total_bytes == 0
    assert chunk.chunk_id in quarantined.name


def _all_frames(path: Path) -> list[frame.Frame]:
    out = []
    with path.open("rb") as handle:
        while (item := frame.decode_from(handle)) is not None:
            out.append(item)
    return out


def test_damaged_last_frame_is_a_torn_tail_not_quarantine(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    commit(buffer, 2, NOW_KEY, lines(2, first=2))
    path = only_chunk_path(buffer)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))

    _, report = reopen(buffer, committed=2)

    assert report.torn_tails == 1 and not report.quarantined
    assert [r["i"] for r in records_in(path)] == [0, 1]


def test_resume_puts_queued_chunks_back_in_the_queue_and_staged_in_staged(tmp_path: Path) -> None:
    buffer = make(tmp_path, flush_mode="lazy")
    commit(buffer, 1, NOW_KEY - 3 * HOUR, lines(1))
    commit(buffer, 2, NOW_KEY - 2 * HOUR, lines(2, first=1))
    commit(buffer, 3, NOW_KEY, lines(3, first=3))
    assert buffer.enqueue_due() == 2
    queued = [(c.chunk_id, c.records) for c in buffer.queue]
    staged_id = buffer.staged[NOW_KEY].chunk_id
    total = buffer.total_bytes

    again, report = reopen(buffer, committed=3, flush_mode="lazy")

    assert report.chunks == 3 and report.records == 6
    assert [(c.chunk_id, c.records) for c in again.queue] == queued
    assert all(c.state is ChunkState.QUEUED for c in again.queue)
    assert list(again.staged) == [NOW_KEY] and again.staged[NOW_KEY].chunk_id == staged_id
    assert again.total_bytes == total

    # the resumed staged chunk keeps taking frames under the same id
    commit(again, 4, NOW_KEY, lines(1, first=6))
    assert again.staged[NOW_KEY].chunk_id == staged_id
    assert [r["i"] for r in records_in(again.staged[NOW_KEY].path)] == [3, 4, 5, 6]


def test_resume_with_two_staged_chunks_for_one_window_seals_the_older(tmp_path: Path) -> None:
    """A crash between sealing a full chunk and enqueueing it leaves two staged chunks for one window."""
    buffer = make(tmp_path, chunk_limit_bytes=1024)
    plan = CommitPlan()
    buffer.plan(plan, NOW_KEY, 1, [data_frame(1, lines(1, pad=1100))], 1)
    buffer.plan(plan, NOW_KEY, 1, [data_frame(1, lines(1, first=1))], 1)
    plan.apply()
    older, newer = buffer._sealed[0], buffer.staged[NOW_KEY]
    os.utime(older.path, ns=(1_000_000_000, 1_000_000_000))
    os.utime(newer.path, ns=(2_000_000_000, 2_000_000_000))

    again, report = reopen(buffer, committed=1, chunk_limit_bytes=1024)

    assert report.chunks == 2 and report.records == 2
    assert again.staged[NOW_KEY].chunk_id == newer.chunk_id
    assert again.enqueue_due() == 1
    assert [c.chunk_id for c in again.queue] == [older.chunk_id]
    assert again.staged[NOW_KEY].chunk_id == newer.chunk_id


@pytest.mark.asyncio
async def test_resumed_queue_can_be_dequeued(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    buffer.enqueue_due(force=True)
    again, _ = reopen(buffer, committed=1)
    chunk = await asyncio.wait_for(again.dequeue(), 1)
    assert chunk.records == 2


def test_resume_reports_source_ends_and_max_seq(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(1), end=100, key="1:2", path="/logs/a.jsonl")
    commit(buffer, 4, NOW_KEY - HOUR, lines(1), end=250, key="1:2", path="/logs/a.jsonl")
    commit(buffer, 3, NOW_KEY, lines(1), end=180, key="1:2", path="/logs/a.jsonl")
    commit(buffer, 2, NOW_KEY, lines(1), end=40, key="1:3", path="/logs/b.jsonl")

    _, report = reopen(buffer, committed=4)

    assert report.max_seq == 4
    assert report.source_ends == {
        ("agent", "1:2"): ("/logs/a.jsonl", 250),
        ("agent", "1:3"): ("/logs/b.jsonl", 40),
    }


def test_resume_ignores_other_files(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    (buffer.directory / "notes.txt").write_text("operator notes")
    (buffer.directory / ".tmp.json.tmp").write_text("x")
    _, report = reopen(buffer, committed=0)
    assert report.chunks == 0
    assert (buffer.directory / "notes.txt").read_text() == "operator notes"


# -- delivery bookkeeping ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_dequeue_waits_for_a_queued_chunk(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    waiter = asyncio.create_task(buffer.dequeue())
    await asyncio.sleep(0)
    assert not waiter.done()

    commit(buffer, 1, NOW_KEY, lines(1))
    buffer.enqueue_due(force=True)
    chunk = await asyncio.wait_for(waiter, 1)

    assert chunk in buffer.in_flight and not buffer.queue
    assert buffer.pending_chunks() == 1


@pytest.mark.asyncio
async def test_ack_deletes_the_chunk_and_frees_its_bytes(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(2))
    buffer.enqueue_due(force=True)
    chunk = await buffer.dequeue()

    buffer.ack(chunk)

    assert not chunk.path.exists() and files(buffer) == []
    assert buffer.total_bytes == 0 and buffer.pending_chunks() == 0
    await asyncio.wait_for(buffer.wait_drained(), 1)


@pytest.mark.asyncio
async def test_nack_puts_the_chunk_back_at_the_front(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY - HOUR, lines(1))
    commit(buffer, 2, NOW_KEY, lines(2))
    buffer.enqueue_due(force=True)
    first = await buffer.dequeue()

    buffer.nack(first)

    assert list(buffer.queue)[0] is first and len(buffer.queue) == 2
    assert first.path.exists() and not buffer.in_flight
    assert await buffer.dequeue() is first


@pytest.mark.asyncio
async def test_set_aside_and_replay(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(3))
    buffer.enqueue_due(force=True)
    chunk = await buffer.dequeue()
    name = chunk.path.name
    original = chunk.path.read_bytes()

    target = buffer.set_aside(chunk, {"error": "mapping conflict", "attempts": 20})

    assert target == buffer.dead_dir / name and target.read_bytes() == original
    assert orjson.loads((buffer.dead_dir / f"{name}.error.json").read_bytes()) == {
        "error": "mapping conflict",
        "attempts": 20,
    }
    assert files(buffer) == [] and buffer.total_bytes == 0 and buffer.pending_chunks() == 0

    assert replay_dead_chunks(buffer.directory) == 1
    assert files(buffer) == [name]
    assert (buffer.dead_dir / f"{name}.error.json.replayed").exists()
    assert not (buffer.dead_dir / name).exists()

    again, report = reopen(buffer, committed=1)
    assert report.records == 3
    (back,) = again.queue
    assert back.chunk_id == chunk.chunk_id and back.state is ChunkState.QUEUED
    assert [r["i"] for r in records_in(back.path)] == [0, 1, 2]


def test_replay_without_dead_dir_is_a_no_op(tmp_path: Path) -> None:
    assert replay_dead_chunks(tmp_path) == 0


@pytest.mark.asyncio
async def test_total_limit_blocks_until_ack(tmp_path: Path) -> None:
    buffer = make(tmp_path, total_limit_bytes=64 * 1024)
    assert buffer.has_space()
    commit(buffer, 1, NOW_KEY, lines(1, pad=70 * 1024))
    assert not buffer.has_space()

    waiter = asyncio.create_task(buffer.wait_for_space())
    await asyncio.sleep(0)
    assert not waiter.done(), "full: the committer must wait"

    buffer.enqueue_due(force=True)
    buffer.ack(await buffer.dequeue())
    await asyncio.wait_for(waiter, 1)
    assert buffer.has_space() and buffer.total_bytes == 0


def test_drop_oldest_removes_the_oldest_queued_chunk(tmp_path: Path) -> None:
    buffer = make(tmp_path, total_limit_bytes=64 * 1024)
    commit(buffer, 1, NOW_KEY - HOUR, lines(1, pad=40 * 1024))
    buffer.enqueue_due(force=True)
    commit(buffer, 2, NOW_KEY, lines(1, pad=40 * 1024))
    buffer.enqueue_due(force=True)
    oldest, newest = list(buffer.queue)
    assert not buffer.has_space()

    assert buffer.drop_oldest() is True

    assert not oldest.path.exists() and newest.path.exists()
    assert list(buffer.queue) == [newest]
    assert buffer.dropped_chunks == 1
    assert buffer.total_bytes == newest.size and buffer.has_space()


@pytest.mark.asyncio
async def test_drop_oldest_never_drops_a_chunk_in_flight(tmp_path: Path) -> None:
    buffer = make(tmp_path)
    commit(buffer, 1, NOW_KEY, lines(1))
    buffer.enqueue_due(force=True)
    chunk = await buffer.dequeue()
    assert buffer.drop_oldest() is False
    assert chunk.path.exists()
