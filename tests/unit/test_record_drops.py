"""Records a source decided at start not to deliver (``pipeline.buffer.drops``): what every output's chunk reader
leaves out, what it keeps, and how long the decision lasts."""

from __future__ import annotations

from pathlib import Path

import orjson

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame
from pipeline.buffer.drops import FILE_NAME, DropRule, RecordDrops


def records(source: str, file: str, offsets: list[int], seq: int, ids: bool = False) -> list[bytes]:
    lines = [orjson.dumps({"src": source, "offset": offset}) + b"\n" for offset in offsets]
    meta: dict[str, object] = {"src": source, "file": file, "path": f"kafka://{file}", "end": offsets[-1] + 1,
                               "offs": offsets}
    if ids:
        meta["ids"], meta["idk"] = [f"id{offset}" for offset in offsets], ["", "timestamp"]
    return frame.encode_parts(frame.KIND_DATA, seq, len(offsets), meta, [b"".join(lines)])


def chunk_with_frames(directory: Path, drops: RecordDrops) -> Chunk:
    """Frames of commits 1-2 (before a restart: the bus partition t:0 at offsets 0-9, a tail file's records),
    then one of commit 5 (after it: t:0 read again from 6)."""
    chunk = Chunk(directory, 1795000000, "c0ffee", ChunkState.QUEUED, drops=drops)
    chunk.write(header_frame(chunk, 1, "out"))
    chunk.write(*records("bus", "t:0", [0, 1, 2, 3, 4], 1, ids=True))
    chunk.write(*records("app", "8:9", [0, 40, 80], 1))
    chunk.write(*records("bus", "t:0", [5, 6, 7, 8, 9], 2, ids=True))
    chunk.write(*records("bus", "t:1", [5, 6, 7], 2))
    chunk.write(*records("bus", "t:0", [6, 7, 8], 5, ids=True))
    return chunk


def delivered(chunk: Chunk) -> list[tuple[str, str, int]]:
    return [(item.meta["src"], item.meta["file"], orjson.loads(line)["offset"])
            for item in chunk.frames() for line in item.payload.splitlines()]


def test_the_records_a_rule_covers_are_left_out_and_every_other_is_delivered(tmp_path: Path) -> None:
    drops = RecordDrops(tmp_path)
    chunk = chunk_with_frames(tmp_path, drops)
    drops.add([DropRule("bus", "t:0", 3, seq=2, chunks=("c0ffee",))])

    assert delivered(chunk) == [
        ("bus", "t:0", 0), ("bus", "t:0", 1), ("bus", "t:0", 2),  # before the cut: ours to deliver
        ("app", "8:9", 0), ("app", "8:9", 40), ("app", "8:9", 80),  # another source: untouched
        ("bus", "t:1", 5), ("bus", "t:1", 6), ("bus", "t:1", 7),  # another partition: untouched
        ("bus", "t:0", 6), ("bus", "t:0", 7), ("bus", "t:0", 8),  # read after the restart (commit 5): ours
    ]
    first = next(chunk.frames())
    assert (first.count, first.meta["offs"], first.meta["ids"]) == (3, [0, 1, 2], ["id0", "id1", "id2"])
    assert chunk.leaves_out_records()
    assert b"".join(chunk.payloads()).count(b"\n") == 12


def test_a_chunk_no_rule_names_is_read_as_stored(tmp_path: Path) -> None:
    drops = RecordDrops(tmp_path)
    chunk = chunk_with_frames(tmp_path, drops)
    drops.add([DropRule("bus", "t:0", 3, seq=2, chunks=("another",))])

    assert len(delivered(chunk)) == 19
    assert not chunk.leaves_out_records()


def test_rules_are_saved_kept_while_their_chunks_exist_and_forgotten_after(tmp_path: Path) -> None:
    rules = [DropRule("bus", "t:0", 3, seq=2, chunks=("c0ffee", "d00d")), DropRule("bus", "t:1", 9, 4, ("d00d",))]
    RecordDrops(tmp_path).add(rules)

    again = RecordDrops(tmp_path)  # the next start, both chunks still buffered
    again.load({"c0ffee", "d00d", "new"})
    assert again.rules == rules
    chunk = chunk_with_frames(tmp_path, again)
    assert [offset for _, file, offset in delivered(chunk) if file == "t:0"] == [0, 1, 2, 6, 7, 8]

    later = RecordDrops(tmp_path)  # d00d delivered since
    later.load({"c0ffee"})
    assert later.rules == [DropRule("bus", "t:0", 3, seq=2, chunks=("c0ffee",))]
    assert orjson.loads((tmp_path / FILE_NAME).read_bytes()) == [
        {"source": "bus", "file": "t:0", "offset": 3, "seq": 2, "chunks": ["c0ffee"]}]

    RecordDrops(tmp_path).load(set())  # every chunk gone
    assert orjson.loads((tmp_path / FILE_NAME).read_bytes()) == []


def test_the_first_rule_made_after_a_frame_was_written_decides_it(tmp_path: Path) -> None:
    """Two restarts before the chunk was delivered: each made a rule; a frame written before the first restart
    follows the first, one written between the two restarts the second."""
    drops = RecordDrops(tmp_path)
    chunk = chunk_with_frames(tmp_path, drops)
    drops.add([DropRule("bus", "t:0", 7, seq=6, chunks=("c0ffee",)), DropRule("bus", "t:0", 2, 2, ("c0ffee",))])

    assert [offset for _, file, offset in delivered(chunk) if file == "t:0"] == [0, 1, 6]
