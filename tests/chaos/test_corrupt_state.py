"""Corrupt state between runs: the daemon starts, says what it salvaged and set aside, delivers the rest."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline import generator
from pipeline.buffer import frame
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, Ledger, wait_for

pytestmark = pytest.mark.integration
COUNT = 600


def buffered_run(layout: Layout, daemon_factory: list[Daemon]) -> list[Path]:
    """Read COUNT records into queued chunks that cannot be delivered yet (output blocked), then stop."""
    blocker = layout.out / "blocked"
    blocker.write_text("not a directory")
    layout.write_config(output={"path": str(blocker / "%Y%m%d-%H.jsonl")}, source={"read_bytes": 16 * 1024},
                        buffer={"chunk_limit_bytes": 64 * 1024, "retry_limit": 1000, "retry_max_interval": 0.2})
    generator.write(str(layout.logs / "agent.log"), COUNT, max_chars=300)
    positions = layout.state / "positions.json"
    with new_daemon(layout, daemon_factory) as daemon:
        size = (layout.logs / "agent.log").stat().st_size
        wait_for(lambda: positions.exists() and orjson.loads(positions.read_bytes())["files"][0]["offset"] == size,
                 what="everything read")
        assert daemon.stop() == 0
    blocker.unlink()
    layout.write_config()
    chunks = sorted((layout.state / "buffer" / "debug").glob("*.queued"))
    assert len(chunks) > 3
    return chunks


def frame_records(path) -> list[list[str]]:
    """request_ids per data frame of a chunk file."""
    with path.open("rb") as handle:
        frames = []
        while (item := frame.decode_from(handle)) is not None:
            if item.kind == frame.KIND_DATA:
                frames.append([orjson.loads(x)["request_id"] for x in item.payload.splitlines()])
        return frames


def expected_ids() -> list[str]:
    return [generator.request_id(1, n) for n in range(COUNT)]


def test_truncated_chunk_keeps_its_whole_frames_and_reports_the_cut(layout, daemon_factory):
    chunks = buffered_run(layout, daemon_factory)
    victim = chunks[1]
    frames = frame_records(victim)
    size = victim.stat().st_size
    with victim.open("r+b") as handle:
        handle.truncate(size - 10)  # the last frame loses its end
    with new_daemon(layout, daemon_factory) as daemon:
        lost = set(frames[-1])
        wait_for(lambda: len(layout.records()) >= COUNT - len(lost), what="salvaged records")
        daemon.stop()
    assert "cut torn tail" in daemon.log()
    ledger = Ledger.compare(expected_ids(), layout.records())
    assert not ledger.duplicated and not ledger.unexpected
    assert ledger.lost == lost  # exactly the damaged frame, nothing else


def test_damaged_chunk_header_is_quarantined_and_the_rest_delivered(layout, daemon_factory):
    chunks = buffered_run(layout, daemon_factory)
    victim = chunks[2]
    frames = frame_records(victim)
    data = bytearray(victim.read_bytes())
    data[0:4] = b"XXXX"  # the chunk's header frame (its metadata) is unreadable
    victim.write_bytes(bytes(data))
    with new_daemon(layout, daemon_factory) as daemon:
        set_aside = {rid for f in frames for rid in f}
        wait_for(lambda: len(layout.records()) >= COUNT - len(set_aside), what="other chunks")
        daemon.stop()
    quarantined = list((layout.state / "buffer" / "debug" / "quarantine").iterdir())
    assert [p.name for p in quarantined] == [victim.name]
    assert "buffer chunk damaged" in daemon.log() and str(quarantined[0]) in daemon.log()
    ledger = Ledger.compare(expected_ids(), layout.records())
    assert not ledger.duplicated and ledger.lost == set_aside


@pytest.mark.parametrize("garbage", [b"\x00\x17garbage", b'{"version": 1, "commit_seq": 3, "crc": 1, "fil'])
def test_garbage_position_store_is_set_aside_and_rebuilt_from_the_buffers(layout, daemon_factory, garbage):
    buffered_run(layout, daemon_factory)
    positions = layout.state / "positions.json"
    positions.write_bytes(garbage)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= COUNT, what="all records")
        daemon.stop()
    assert "position store damaged" in daemon.log()
    assert list(layout.state.glob("positions.json.corrupt-*"))
    Ledger.compare(expected_ids(), layout.records()).assert_exact()
