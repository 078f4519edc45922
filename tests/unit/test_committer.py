"""Committer.commit on real files: frames, dead letters and positions land together; a failed commit loses nothing."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.buffer import frame
from pipeline.buffer.file_buffer import CommitPlan, FileBuffer
from pipeline.clock import FakeClock
from pipeline.config import BufferConfig, EnrichConfig
from pipeline.deadletter import DeadLetterStore
from pipeline.runtime.committer import END, Committer, EndOfInput
from pipeline.runtime.routing import TagRoutes
from pipeline.sources.base import LineBatch
from pipeline.sources.tail.checkpoint import FilePosition, PositionStore
from pipeline.transforms.records import ProcessedBatch, RecordProcessor

WALL = 1_795_000_000.0
KEY = "8:77"


class Env:
    def __init__(self, root: Path, outputs: tuple[str, ...] = ("search", "archive"), **cfg: Any) -> None:
        self.root = root
        self.clock = FakeClock(WALL)
        self.positions = PositionStore(root / "positions.json")
        self.positions.load()
        self.dead_letters = DeadLetterStore(root / "dead-letter")
        self.dead_letters.prepare()
        self.buffers = []
        for name in outputs:
            buffer = FileBuffer(name, root / "buffer" / name, BufferConfig(**cfg), self.clock)
            buffer.resume(self.positions.commit_seq)
            self.buffers.append(buffer)
        self.inbox: asyncio.Queue[ProcessedBatch | EndOfInput] = asyncio.Queue()
        self.committer = Committer(
            self.inbox, TagRoutes({"agent": self.buffers}, [], set()), self.buffers, self.positions, self.dead_letters,
            self.clock,
        )
        self.processor = RecordProcessor(EnrichConfig(hostname="h"), {3600}, self.clock)
        self.offset = 0

    def batch(self, *lines: bytes) -> ProcessedBatch:
        data = b"".join(line + b"\n" for line in lines)
        start, self.offset = self.offset, self.offset + len(data)
        position = FilePosition("agent", KEY, "/logs/a.jsonl", self.offset, "fp", 10)
        line_batch = LineBatch("agent", "ai", KEY, "/logs/a.jsonl", start, self.offset, data, position)
        return self.processor.process(line_batch)


def saved_positions(root: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((root / "positions.json").read_bytes())
    return doc


def chunk_frames(buffer: FileBuffer) -> list[frame.Frame]:
    out = []
    for path in sorted(buffer.directory.glob("*.staged")) + sorted(buffer.directory.glob("*.queued")):
        with path.open("rb") as handle:
            while (item := frame.decode_from(handle)) is not None:
                out.append(item)
    return out


def record_values(buffer: FileBuffer) -> list[Any]:
    return [
        orjson.loads(line)["n"]
        for item in chunk_frames(buffer)
        if item.kind == frame.KIND_DATA
        for line in item.payload.splitlines()
    ]


def dead_entries(root: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in (root / "dead-letter").glob("records-*.jsonl")
        for line in path.read_bytes().splitlines()
    ]


@pytest.mark.asyncio
async def test_commit_writes_frames_then_positions(tmp_path: Path) -> None:
    env = Env(tmp_path)
    item = env.batch(b'{"n":1}', b'{"n":2}')

    await env.committer.commit([item])

    doc = saved_positions(tmp_path)
    assert doc["commit_seq"] == 1 and env.positions.commit_seq == 1
    assert [(f["source"], f["key"], f["offset"]) for f in doc["files"]] == [("agent", KEY, item.batch.end)]
    for buffer in env.buffers:
        frames = chunk_frames(buffer)
        assert [f.kind for f in frames] == [frame.KIND_HEADER, frame.KIND_DATA]
        data = frames[1]
        assert data.seq == 1 and data.count == 2
        assert data.meta["end"] == item.batch.end and data.meta["offs"] == [0, 8]
        assert record_values(buffer) == [1, 2]
        assert not buffer.queue, "the flush interval has not passed: still staged"
    assert env.committer.stats.commits == 1 and env.committer.stats.records == 2


@pytest.mark.asyncio
async def test_commit_writes_dead_letters(tmp_path: Path) -> None:
    env = Env(tmp_path)
    item = env.batch(b'{"n":1}', b"{broken", b"[1]")

    await env.committer.commit([item])

    entries = dead_entries(tmp_path)
    assert [(e["offset"], e["line"]) for e in entries] == [(8, "{broken"), (16, "[1]")]
    assert all(e["source"] == "agent" and e["path"] == "/logs/a.jsonl" for e in entries)
    assert env.committer.stats.dead_lines == 2
    assert saved_positions(tmp_path)["files"][0]["offset"] == item.batch.end, "the position moves past bad lines"
    assert record_values(env.buffers[0]) == [1]


@pytest.mark.asyncio
async def test_several_commits_append_to_one_chunk(tmp_path: Path) -> None:
    env = Env(tmp_path)
    await env.committer.commit([env.batch(b'{"n":1}'), env.batch(b'{"n":2}')])
    await env.committer.commit([env.batch(b'{"n":3}')])
    assert env.positions.commit_seq == 2
    frames = chunk_frames(env.buffers[0])
    assert [f.seq for f in frames] == [1, 1, 1, 2]
    assert record_values(env.buffers[0]) == [1, 2, 3]
    assert saved_positions(tmp_path)["files"][0]["offset"] == env.offset


@pytest.mark.asyncio
@pytest.mark.parametrize("failing_commit", [1, 2])
async def test_failed_apply_is_undone_and_retried_without_loss_or_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_commit: int
) -> None:
    env = Env(tmp_path)
    original = CommitPlan.apply
    calls = {"n": 0}

    def flaky_apply(plan: CommitPlan) -> None:
        calls["n"] += 1
        original(plan)  # the bytes reach the files...
        if calls["n"] == failing_commit:
            raise OSError(errno.ENOSPC, "No space left on device")  # ...but the fsync fails

    monkeypatch.setattr(CommitPlan, "apply", flaky_apply)

    await asyncio.wait_for(env.committer.commit([env.batch(b'{"n":1}', b"{bad")]), 5)
    await asyncio.wait_for(env.committer.commit([env.batch(b'{"n":2}', b'{"n":3}')]), 5)

    assert env.committer.stats.failed_commits == 1 and calls["n"] == 3
    for buffer in env.buffers:
        frames = chunk_frames(buffer)
        assert [f.kind for f in frames].count(frame.KIND_HEADER) == 1, "one header, one chunk"
        assert [f.seq for f in frames if f.kind == frame.KIND_DATA] == [1, 2]
        assert record_values(buffer) == [1, 2, 3], "each frame exactly once"
        assert buffer.total_bytes == sum(p.stat().st_size for p in buffer.directory.glob("*.staged"))
    doc = saved_positions(tmp_path)
    assert doc["commit_seq"] == 2
    assert doc["files"][0]["offset"] == env.offset
    assert [e["line"] for e in dead_entries(tmp_path)] == ["{bad"], "the dead entry is written once"

    # and the buffer resumes cleanly from what is on disk
    for buffer in env.buffers:
        again = FileBuffer(buffer.output, buffer.directory, buffer.config, env.clock)
        report = again.resume(doc["commit_seq"])
        assert report.records == 3 and report.rolled_back_frames == 0 and report.torn_tails == 0


@pytest.mark.asyncio
async def test_a_commit_failing_after_its_dead_letters_were_written_writes_them_once_when_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path)
    original, calls = PositionStore.save, {"n": 0}

    def flaky_save(store: PositionStore, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 1:  # frames and dead letters are written and fsynced: the commit point fails
            raise OSError(errno.EIO, "Input/output error")
        original(store, data)

    monkeypatch.setattr(PositionStore, "save", flaky_save)
    await asyncio.wait_for(env.committer.commit([env.batch(b'{"n":1}', b"{bad")]), 5)
    assert env.committer.stats.failed_commits == 1 and calls["n"] == 2
    assert [e["line"] for e in dead_entries(tmp_path)] == ["{bad"], "the dead entry is written once"
    assert record_values(env.buffers[0]) == [1]


@pytest.mark.asyncio
async def test_run_commits_and_flushes_on_request(tmp_path: Path) -> None:
    env = Env(tmp_path, outputs=("search",))
    await env.inbox.put(env.batch(b'{"n":1}'))
    await env.inbox.put(env.batch(b'{"n":2}'))
    await env.inbox.put(END)
    env.committer.request_flush()

    await asyncio.wait_for(env.committer.run(), 5)

    (buffer,) = env.buffers
    assert not buffer.staged and len(buffer.queue) == 1
    assert record_values(buffer) == [1, 2]
    assert saved_positions(tmp_path)["files"][0]["offset"] == env.offset


@pytest.mark.asyncio
async def test_drop_oldest_chunk_makes_room(tmp_path: Path) -> None:
    env = Env(tmp_path, outputs=("search",), total_limit_bytes=64 * 1024, overflow_action="drop_oldest_chunk")
    (buffer,) = env.buffers
    big = b'{"n":1,"pad":"' + b"x" * (70 * 1024) + b'"}'
    await env.committer.commit([env.batch(big)])
    buffer.enqueue_due(force=True)
    (oldest,) = buffer.queue
    assert not buffer.has_space()

    await asyncio.wait_for(env.committer.commit([env.batch(b'{"n":2}')]), 5)

    assert not oldest.path.exists() and buffer.dropped_chunks == 1
    assert record_values(buffer) == [2]


class ListJournal:
    """A CommitJournal that records what each commit wrote and whether positions were saved by then."""

    def __init__(self, positions: PositionStore) -> None:
        self.positions = positions
        self.writes: list[tuple[int, list[object], int, bool]] = []

    def write(self, seq: int, items: list[object], point: bool) -> None:
        self.writes.append((seq, items, self.positions.commit_seq, point))


def network_batch(env: Env, key: str, *lines: bytes, calls: list[str], journal: ListJournal | None = None
                  ) -> ProcessedBatch:
    """A batch as a network source makes it: no position, an on_commit, maybe a journal entry."""
    data = b"".join(line + b"\n" for line in lines)
    batch = LineBatch("agent", "ai", key, "forward://peer", 0, len(data), data, None,
                      on_commit=lambda: calls.append(key), journal=None if journal is None else (journal, key))
    return env.processor.process(batch)


@pytest.mark.asyncio
async def test_a_commit_moving_no_position_with_one_journal_takes_its_write_as_the_commit_point(
        tmp_path: Path) -> None:
    env = Env(tmp_path)
    calls: list[str] = []
    journal = ListJournal(env.positions)
    writes_at_call: list[int] = []

    items = [network_batch(env, "c1", b'{"n":1}', calls=calls, journal=journal),
             network_batch(env, "c2", b'{"n":2}', b'{"n":3}', calls=calls, journal=journal),
             network_batch(env, "m3", b'{"n":4}', calls=calls)]
    first = items[0].batch.on_commit
    assert first is not None

    def durable_check() -> None:
        writes_at_call.append(len(journal.writes))
        first()

    items[0].batch.on_commit = durable_check

    await env.committer.commit(items)

    assert calls == ["c1", "c2", "m3"]
    assert writes_at_call == [1], "the journal (the commit point) is written when on_commit runs"
    assert journal.writes == [(1, ["c1", "c2"], 0, True)], "one journal write per commit, as its commit point"
    assert not (tmp_path / "positions.json").exists(), "the positions, unchanged, are not rewritten"
    assert env.positions.commit_seq == 1 and record_values(env.buffers[0]) == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_a_commit_writing_two_journals_saves_the_positions_as_its_commit_point(tmp_path: Path) -> None:
    env = Env(tmp_path)
    calls: list[str] = []
    first, second = ListJournal(env.positions), ListJournal(env.positions)
    seen_at_call: list[int] = []
    items = [network_batch(env, "a1", b'{"n":1}', calls=calls, journal=first),
             network_batch(env, "b1", b'{"n":2}', calls=calls, journal=second)]
    items[0].batch.on_commit = lambda: seen_at_call.append(saved_positions(tmp_path)["commit_seq"])

    await env.committer.commit(items)

    assert first.writes == [(1, ["a1"], 0, False)] and second.writes == [(1, ["b1"], 0, False)]
    assert seen_at_call == [1], "positions (the commit point) are on disk when on_commit runs"
    assert saved_positions(tmp_path)["files"] == [] and calls == ["b1"]


@pytest.mark.asyncio
async def test_a_batch_its_source_no_longer_claims_is_dropped_whole_and_the_others_are_stored(tmp_path: Path) -> None:
    # A Kafka partition revoked while its batch waited for room: nothing of it may be stored, dead-lettered or
    # acknowledged, since the partition's next owner reads it again.
    env = Env(tmp_path)
    calls: list[str] = []
    claimed: list[str] = []
    kept = network_batch(env, "kept", b'{"n":1}', b"{broken", calls=calls)
    dropped = network_batch(env, "dropped", b'{"n":2}', b"{also broken", calls=calls)

    def claim(name: str, wanted: bool) -> Callable[[], bool]:
        def answer() -> bool:
            claimed.append(name)
            return wanted
        return answer

    kept.batch.claim = claim("kept", True)
    dropped.batch.claim = claim("dropped", False)
    moved = env.batch(b'{"n":3}')

    await env.committer.commit([kept, dropped, moved])

    assert claimed == ["kept", "dropped"] and calls == ["kept"]
    assert record_values(env.buffers[0]) == [1, 3]
    assert [e["line"] for e in dead_entries(tmp_path)] == ["{broken"]
    assert env.committer.stats.records == 2
    only_dropped = network_batch(env, "alone", b'{"n":4}', calls=calls)
    only_dropped.batch.claim = lambda: False
    await env.committer.commit([only_dropped])
    assert env.positions.commit_seq == 1 and calls == ["kept"], "a commit of dropped batches only writes nothing"


@pytest.mark.asyncio
async def test_batches_of_a_source_routed_by_record_tag_go_to_the_outputs_matching_their_tag(tmp_path: Path) -> None:
    from pipeline.runtime.routing import TagRoutes

    env = Env(tmp_path)
    search, archive = env.buffers
    env.committer.routes = TagRoutes({"agent": [search, archive]}, [(["app.**"], search), (["**"], archive)],
                                     {"agent"})
    calls: list[str] = []
    app = network_batch(env, "a", b'{"n":1}', calls=calls)
    app.batch.tag = "app.web"
    other = network_batch(env, "b", b'{"n":2}', calls=calls)
    other.batch.tag = "system.kernel"

    await env.committer.commit([app, other])

    assert record_values(search) == [1] and record_values(archive) == [1, 2]


def test_a_cut_back_never_takes_the_entries_another_writer_appended_since(tmp_path: Path) -> None:
    # The committer and the outputs (rejected or oversized records) append to one file from their threads.
    store = DeadLetterStore(tmp_path / "dead-letter")
    store.prepare()
    ours = store.write([b'{"id": "ours"}\n'])
    store.write([b'{"id": "theirs"}\n'])  # an output's, between our commit's write and its failure
    assert ours is not None
    store.cut_back(ours)  # not cut: ours appear twice after the retry, theirs are never lost
    last = store.write([b'{"id": "retried"}\n'])
    assert last is not None
    store.cut_back(last)  # nothing written since: cut
    assert [e["id"] for e in dead_entries(tmp_path)] == ["ours", "theirs"]


def test_a_dead_letter_write_failing_partway_leaves_no_partial_entry_behind(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk fills in the middle of the entries: the retry writes them all again, so none may stay half written.
    store = DeadLetterStore(tmp_path / "dead")
    store.prepare()
    store.write([b'{"id":"before"}\n'])
    real_writev = os.writev
    calls: list[int] = []

    def filling_up(fd: int, buffers: list[memoryview]) -> int:
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(fd)
        return real_writev(fd, [bytes(buffers[0])[:9]])

    monkeypatch.setattr(os, "writev", filling_up)
    with pytest.raises(OSError):
        store.write([b'{"id":"one"}\n', b'{"id":"two"}\n'])
    monkeypatch.undo()
    store.write([b'{"id":"one"}\n', b'{"id":"two"}\n'])  # the retry
    [letters] = (tmp_path / "dead").glob("records-*.jsonl")
    assert [orjson.loads(line)["id"] for line in letters.read_bytes().splitlines()] == ["before", "one", "two"]


def queued(env: Env) -> list[int]:
    return [len(buffer.queue) for buffer in env.buffers]


def test_a_batch_its_source_has_not_confirmed_holds_its_chunks_back_until_released(tmp_path: Path) -> None:
    """A Kafka batch is delivered only once the group has its offset (LineBatch.confirm): not even a forced
    flush, nor a full chunk, sends its chunks before ``release``; a stop does not wait for them."""
    env = Env(tmp_path, chunk_limit_records=2)
    holds: list[Any] = []
    first, second = env.batch(b'{"n":1}'), env.batch(b'{"n":2}', b'{"n":3}')  # the second fills a chunk
    for item in (first, second):
        item.batch.confirm = holds.append
    asyncio.run(env.committer.commit([first]))
    asyncio.run(env.committer.commit([second]))
    assert [len(hold.chunks) for hold in holds] == [2, 2], "each batch holds its chunk in both outputs"
    assert [chunk.holds for chunk in env.buffers[0].staged.values()] == [2]
    assert env.buffers[0].enqueue_due(force=True) == 0 and queued(env) == [0, 0]
    assert env.buffers[0].seconds_until_due() is None, "nothing to wait for but the release"
    assert env.buffers[0].held_chunks() == 1
    asyncio.run(asyncio.wait_for(env.buffers[0].wait_drained(), 1))  # a stop leaves held chunks to the next start
    holds[0].release()
    assert env.buffers[0].enqueue_due(force=True) == 0, "the other batch still holds it"
    holds[1].release()
    holds[1].release()  # twice (a sync commit's answer and its callback): counted once
    assert env.buffers[0].enqueue_due() == 1 and env.buffers[1].enqueue_due() == 1 and queued(env) == [1, 1]
    assert env.committer._wake.is_set(), "a release wakes the committer, which enqueues what became free"
