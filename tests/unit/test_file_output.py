"""FileOutput: a chunk appended before a crash but never acked is cut back and appended again, once."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame
from pipeline.clock import FakeClock
from pipeline.deadletter import DeadLetterStore
from pipeline.outputs.base import OutputContext
from pipeline.outputs.file.config import FileOutputConfig
from pipeline.outputs.file.output import FileOutput

TIMEKEY = 1_795_000_000 // 3600 * 3600


def output(tmp_path: Path) -> FileOutput:
    state = tmp_path / "buffer" / "debug"
    state.mkdir(parents=True, exist_ok=True)
    config = FileOutputConfig(type="file", path=str(tmp_path / "out" / "%Y%m%d-%H.jsonl"))
    context = OutputContext("debug", state, DeadLetterStore(tmp_path / "dead-letter"), FakeClock(1.8e9), "host")
    return FileOutput(config, context)


def queued_chunk(tmp_path: Path, chunk_id: str, ids: list[str]) -> Chunk:
    chunk = Chunk(tmp_path / "buffer" / "debug", TIMEKEY, chunk_id, ChunkState.STAGED)
    payload = b"".join(orjson.dumps({"request_id": i}) + b"\n" for i in ids)
    chunk.write(header_frame(chunk, 1, "debug"), frame.encode(frame.KIND_DATA, 1, len(ids), {}, payload))
    chunk.enqueue()
    return chunk


def delivered(tmp_path: Path) -> list[str]:
    [path] = (tmp_path / "out").iterdir()
    return [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines()]


@pytest.mark.asyncio
async def test_an_unacked_append_is_cut_back_at_the_next_start(tmp_path: Path) -> None:
    first = output(tmp_path)
    await first.start()
    acked = queued_chunk(tmp_path, "aaaa", ["a1", "a2"])
    await first.write(acked)
    acked.delete()  # what the flusher's ack does
    interrupted = queued_chunk(tmp_path, "bbbb", ["b1", "b2", "b3"])
    await first.write(interrupted)  # appended, then the process dies before the ack
    await first.close()
    assert delivered(tmp_path) == ["a1", "a2", "b1", "b2", "b3"]

    again = output(tmp_path)
    await again.start()
    assert delivered(tmp_path) == ["a1", "a2"], "only the unacked chunk is cut back"
    await again.write(interrupted)  # its delivery in its turn
    await again.close()
    assert delivered(tmp_path) == ["a1", "a2", "b1", "b2", "b3"]


@pytest.mark.asyncio
async def test_the_journal_is_rewritten_in_place_at_a_constant_size(tmp_path: Path) -> None:
    out = output(tmp_path)
    await out.start()
    sizes, inodes = set(), set()
    for n in range(5):
        chunk = queued_chunk(tmp_path, f"c{n:03d}", [f"r{n}"])
        await out.write(chunk)
        chunk.delete()
        st = out.journal_path.stat()
        sizes.add(st.st_size)
        inodes.add(st.st_ino)
    await out.close()
    assert sizes == {4096} and len(inodes) == 1, "no growth, no rename: one data write per chunk"
    assert delivered(tmp_path) == [f"r{n}" for n in range(5)]


@pytest.mark.asyncio
async def test_an_unreadable_journal_is_started_afresh(tmp_path: Path) -> None:
    out = output(tmp_path)
    out.journal_path.write_bytes(b'{"torn": {"path": "/x", "fi')  # a write torn by a power loss
    await out.start()
    chunk = queued_chunk(tmp_path, "dddd", ["d1"])
    await out.write(chunk)
    await out.close()
    assert delivered(tmp_path) == ["d1"]
    assert list(orjson.loads(out.journal_path.read_bytes())) == ["dddd"]
