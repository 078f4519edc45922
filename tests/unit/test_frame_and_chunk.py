"""The on-disk frame format and chunk files: what resume and every output rely on to read records back."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame
from pipeline.buffer.frame import FrameError


def data_frame(seq: int = 3, payload: bytes = b'{"a":1}\n{"b":2}\n') -> bytes:
    meta = {"src": "agent", "file": "1:2", "path": "/var/log/a.jsonl", "end": 42, "offs": [0, 8]}
    return frame.encode(frame.KIND_DATA, seq, payload.count(b"\n"), meta, payload)


def test_encode_decode_roundtrip_keeps_every_field() -> None:
    meta = {"src": "agent", "file": "1:2", "path": "/p", "end": 42, "offs": [0, 8]}
    payload = b'{"a":1}\n{"b":"\xc3\xa9"}\n'
    data = frame.encode(frame.KIND_DATA, 17, 2, meta, payload)

    handle = io.BytesIO(data + data)
    first = frame.decode_from(handle)
    second = frame.decode_from(handle)

    assert first is not None and second is not None
    assert (first.kind, first.seq, first.count, first.meta, first.payload) == (frame.KIND_DATA, 17, 2, meta, payload)
    assert first.size == len(data)
    assert second == first
    assert frame.decode_from(handle) is None, "a clean end of file is None, not an error"


def test_a_frame_written_as_pieces_is_the_same_frame(tmp_path: Path) -> None:
    lines = [b'{"a":1}\n', b'{"b":2}\n', b'{"c":"\xc3\xa9"}\n']
    meta = {"src": "agent", "offs": [0, 8, 16]}
    pieces = frame.encode_parts(frame.KIND_DATA, 5, 3, meta, lines)

    assert pieces[1:] == lines, "the records are written as they are, not copied into one string"
    assert b"".join(pieces) == frame.encode(frame.KIND_DATA, 5, 3, meta, b"".join(lines))
    chunk = Chunk(tmp_path, 1795000000, "feed", ChunkState.STAGED)
    chunk.write(*pieces, *pieces)  # one writev of two frames
    assert list(chunk.payloads()) == [b"".join(lines)] * 2


def test_empty_meta_and_payload_roundtrip() -> None:
    data = frame.encode(frame.KIND_HEADER, 0, 0, {}, b"")
    decoded = frame.decode_from(io.BytesIO(data))
    assert decoded is not None
    assert (decoded.kind, decoded.meta, decoded.payload, decoded.size) == (frame.KIND_HEADER, {}, b"", len(data))


@pytest.mark.parametrize("keep", [1, frame.PREFIX_SIZE - 1, frame.PREFIX_SIZE, frame.PREFIX_SIZE + 5, -1])
def test_truncated_frame_is_torn(keep: int) -> None:
    data = data_frame()
    with pytest.raises(FrameError) as info:
        frame.decode_from(io.BytesIO(data[:keep]))
    assert info.value.torn is True


def test_flipped_payload_byte_is_checksum_mismatch_not_torn() -> None:
    data = bytearray(data_frame())
    data[-3] ^= 0x01  # inside the payload
    with pytest.raises(FrameError, match="checksum mismatch") as info:
        frame.decode_from(io.BytesIO(bytes(data)))
    assert info.value.torn is False


def test_flipped_meta_byte_is_checksum_mismatch() -> None:
    data = bytearray(data_frame())
    data[frame.PREFIX_SIZE + 2] ^= 0x20  # inside the JSON meta
    with pytest.raises(FrameError, match="checksum mismatch"):
        frame.decode_from(io.BytesIO(bytes(data)))


def test_flipped_seq_byte_is_checksum_mismatch() -> None:
    """The header is covered by the CRC too: a damaged sequence number cannot pass as committed."""
    data = bytearray(data_frame(seq=5))
    data[frame.HEADER.size - 8] ^= 0x01  # low byte of seq
    with pytest.raises(FrameError, match="checksum mismatch"):
        frame.decode_from(io.BytesIO(bytes(data)))


def test_bad_magic_is_damage_not_torn() -> None:
    data = b"XXXX" + data_frame()[4:]
    with pytest.raises(FrameError) as info:
        frame.decode_from(io.BytesIO(data))
    assert info.value.torn is False


def test_parse_name() -> None:
    assert Chunk.parse_name(Path("1795000000.abcd.staged")) == (1795000000, "abcd", ChunkState.STAGED)
    assert Chunk.parse_name(Path("-3600.abcd.queued")) == (-3600, "abcd", ChunkState.QUEUED)
    assert Chunk.parse_name(Path("1795000000.abcd.staged.error.json")) is None
    assert Chunk.parse_name(Path("1795000000.abcd.bogus")) is None
    assert Chunk.parse_name(Path("x.abcd.staged")) is None


def test_chunk_write_enqueue_and_read_frames(tmp_path: Path) -> None:
    chunk = Chunk(tmp_path, 1795000000, "c0ffee", ChunkState.STAGED)
    chunk.write(header_frame(chunk, 1, "out"))
    chunk.write(data_frame(seq=1, payload=b'{"a":1}\n'))
    chunk.write(data_frame(seq=2, payload=b'{"b":2}\n{"c":3}\n'))
    chunk.sync()
    assert chunk.path == tmp_path / "1795000000.c0ffee.staged"

    chunk.enqueue()

    assert chunk.path == tmp_path / "1795000000.c0ffee.queued"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1795000000.c0ffee.queued"]
    assert list(chunk.payloads()) == [b'{"a":1}\n', b'{"b":2}\n{"c":3}\n'], "the header frame is not data"
    assert [f.seq for f in chunk.frames()] == [1, 2]

    chunk.delete()
    assert not any(tmp_path.iterdir())


def test_header_frame_names_its_chunk(tmp_path: Path) -> None:
    chunk = Chunk(tmp_path, 3600, "abc", ChunkState.STAGED)
    decoded = frame.decode_from(io.BytesIO(header_frame(chunk, 9, "archive")))
    assert decoded is not None
    assert decoded.kind == frame.KIND_HEADER and decoded.count == 0 and decoded.seq == 9
    assert decoded.meta == {"chunk_id": "abc", "output": "archive", "timekey": 3600}


def test_payload_spans_locate_each_data_payload_without_reading_it(tmp_path: Path) -> None:
    chunk = Chunk(tmp_path, 1795000000, "c0ffee", ChunkState.STAGED)
    chunk.write(header_frame(chunk, 1, "out"))
    chunk.write(data_frame(seq=1, payload=b'{"a":1}\n'))
    chunk.write(data_frame(seq=2, payload=b'{"b":2}\n{"c":3}\n'))
    raw = chunk.path.read_bytes()

    with chunk.path.open("rb") as handle:
        spans = list(frame.payload_spans(handle))

    assert [raw[offset : offset + length] for offset, length in spans] == [b'{"a":1}\n', b'{"b":2}\n{"c":3}\n']
    with io.BytesIO(raw[:-3]) as torn, pytest.raises(frame.FrameError):
        list(frame.payload_spans(torn))  # cut inside the last payload: its span would run past the end
