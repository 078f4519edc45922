"""Rotation while writing, performed by Debian's real logrotate, in each mode."""

from __future__ import annotations

import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Ledger, wait_for
from tests.support.logrotate import logrotate
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration
COUNT = 6000
MAX_ROUNDS = 12
SHM = Path("/dev/shm")


QUICK = (1000, 2500, 2600, 4000)  # 2500 and 2600: twice before the daemon can catch up
SPACED = (1000, 2500, 4000)


def rotate_while_writing(layout, daemon_factory, options: str, reopen: bool, marks=QUICK) -> tuple[Ledger, list[int]]:
    layout.write_config()
    rotated_at = []
    with new_daemon(layout, daemon_factory) as daemon:
        writer = AgentWriter(layout.logs / "agent.log", COUNT, reopen=reopen)
        writer.start()
        for mark in marks:
            wait_for(partial(written_at_least, writer, mark), what=f"writer at {mark}")
            logrotate(layout, options)
            rotated_at.append(writer.written)
        writer.join(60)
        assert writer.error is None
        expected = [generator.request_id(1, n) for n in range(COUNT)]
        wait_for(lambda: {r["request_id"] for r in layout.records()} >= set(expected) or None, timeout=30,
                 what="every record") if not options.startswith("copytruncate") else wait_for(
            lambda: len(layout.records()) >= COUNT - 400 and daemon_idle(layout), timeout=30, what="catch-up")
        assert daemon.stop() == 0
    return Ledger.compare(expected, layout.records()), rotated_at


def written_at_least(writer: AgentWriter, count: int) -> bool:
    return writer.written >= count


def daemon_idle(layout) -> bool:
    size = (layout.logs / "agent.log").stat().st_size
    positions = (layout.state / "positions.json").read_bytes()
    return f'"offset":{size},'.encode() in positions


@pytest.mark.parametrize(
    ("options", "marks"),
    [("create", QUICK), ("create\n  compress\n  delaycompress", QUICK), ("create\n  compress", SPACED)],
    ids=["create", "create+delaycompress", "create+compress"],
)
def test_rename_rotation_loses_and_duplicates_nothing(layout, daemon_factory, options, marks):
    ledger, _ = rotate_while_writing(layout, daemon_factory, options, reopen=True, marks=marks)
    ledger.assert_exact()


def test_copytruncate_duplicates_nothing_and_loses_only_inside_its_window(layout, daemon_factory):
    ledger, rotated_at = rotate_while_writing(layout, daemon_factory, "copytruncate", reopen=False)
    assert not ledger.duplicated and not ledger.unexpected
    # copytruncate can lose what is written between its copy and its truncate, for any reader.
    lost_seqs = sorted(int(i.split("-")[1]) for i in ledger.lost)
    assert all(seq < rotated_at[-1] for seq in lost_seqs), lost_seqs[:20]
    assert len(lost_seqs) < 200, f"{len(lost_seqs)} lost"


def opened(daemon: Daemon, count: int) -> bool:
    return daemon.log().count("following file") > count


def finished(daemon: Daemon, count: int) -> bool:
    return daemon.log().count("finished rotated file") > count


@pytest.fixture
def state_elsewhere(layout):
    """State and output on another file system (tmpfs), where there is one.

    ext4 hands a freed inode to the next file created nearby, unless the daemon's own state
    files (a position save at every commit) took it first.
    """
    if not SHM.is_dir():
        yield layout
        return
    elsewhere = Path(tempfile.mkdtemp(dir=SHM, prefix="logferry-test-"))
    layout.state, layout.out = elsewhere / "state", elsewhere / "out"
    layout.out.mkdir()
    try:
        yield layout
    finally:
        shutil.rmtree(elsewhere)


def test_deleted_while_open_and_a_new_file_on_the_old_inode(state_elsewhere, daemon_factory):
    layout = state_elsewhere
    layout.write_config()
    path = layout.logs / "agent.log"
    inodes: list[int] = []
    # Go on until a reuse happened, 4 rounds at least.
    with new_daemon(layout, daemon_factory) as daemon:
        for round_ in range(MAX_ROUNDS):
            generator.write(str(path), 500, start=round_ * 500, max_chars=400)
            inodes.append(path.stat().st_ino)
            wait_for(partial(opened, daemon, round_), what="the daemon to open it")
            path.unlink()  # while the daemon is reading it
            # once the daemon lets go of it, its inode is free: the next file usually gets it
            wait_for(partial(finished, daemon, round_), what="the deleted file finished")
            if round_ >= 3 and len(set(inodes)) < len(inodes):
                break
        total = 500 * len(inodes)
        wait_for(lambda: len(layout.records()) >= total, what="every record")
        assert daemon.stop() == 0
    expected = [generator.request_id(1, n) for n in range(total)]
    Ledger.compare(expected, layout.records()).assert_exact()
    assert len(set(inodes)) < len(inodes), f"no inode was reused in {len(inodes)} rounds: {inodes}"


def test_a_file_quiet_before_it_was_deleted_is_still_read_for_rotate_wait_after(layout, daemon_factory):
    """logrotate's ``rotate 0`` (or a cleanup job) deletes a log its writer still holds open, and the writer
    writes a few more lines before it reopens: they are read, however long the file was quiet before."""
    layout.write_config()  # rotate_wait = 1.0
    path = layout.logs / "agent.log"
    lines = list(generator.lines(8, max_chars=300))
    with new_daemon(layout, daemon_factory) as daemon, path.open("ab") as writer:
        writer.write(b"".join(lines[:5]))
        writer.flush()
        wait_for(lambda: len(layout.records()) == 5, what="the first 5 records")
        time.sleep(1.5)  # the scenario itself: the file quiet for longer than rotate_wait
        path.unlink()
        wait_for(lambda: "file rotated away or deleted" in daemon.log(), what="the deletion noticed")
        writer.write(b"".join(lines[5:]))  # within rotate_wait of the deletion, after it was noticed
        writer.flush()
        wait_for(lambda: len(layout.records()) == 8, what="the lines written after the deletion")
        wait_for(lambda: "finished rotated file" in daemon.log(), what="the file finished")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(8)], layout.records()).assert_exact()

