"""Rotation by Debian's real logrotate while the daemon is stopped, and copytruncate's per-rotation loss."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Layout, Ledger, wait_for
from tests.support.logrotate import logrotate
from tests.support.writer import PacedWriter, lost_per_rotation

pytestmark = pytest.mark.integration
PER = 2000  # records per generation
DATEEXT = "dateext\n  dateformat -%Y%m%d-%s"  # agent.log-20261202-1796240763, as in the field


def next_second() -> None:
    """dateformat's %s names a generation by the second: two rotations need two seconds."""
    time.sleep(1.05 - time.time() % 1)


def ids(count: int) -> list[str]:
    return [generator.request_id(1, n) for n in range(count)]


@pytest.fixture
def appender(layout: Layout) -> Iterator[Callable[[int, int], None]]:
    """``write(start, count)``: records appended through one O_APPEND descriptor kept open, as a
    program that expects copytruncate writes (closed after the test)."""
    fd = os.open(layout.logs / "agent.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(start: int, count: int) -> None:
        for line in generator.lines(count, start=start, max_chars=400):
            os.write(fd, line)

    yield write
    os.close(fd)


def read_first_generation(layout: Layout, daemon_factory, write) -> None:
    """The daemon reads ``PER`` records, then stops; ``write(start, count)`` appends records."""
    write(0, PER)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= PER, what="the first generation")
        assert daemon.stop() == 0


def read_the_rest(layout: Layout, daemon_factory, total: int) -> list[dict[str, Any]]:
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= total, timeout=60, what="every record")
        assert daemon.stop() == 0
    return layout.records()


def assert_in_order(records: list[dict[str, Any]], total: int) -> None:
    """Each generation's records come after the previous generation's (the output keeps read order)."""
    seqs = [int(r["request_id"].split("-")[1]) for r in records]
    for first in range(PER, total - PER + 1, PER):
        generation = [i for i, s in enumerate(seqs) if first <= s < first + PER]
        successor = [i for i, s in enumerate(seqs) if s >= first + PER]
        if generation and successor:
            assert max(generation) < min(successor), f"records from {first + PER} on came before {first}'s"


def test_dateext_rotations_while_stopped_lose_nothing(layout, daemon_factory):
    """Stopped; the agent goes on; logrotate (create, dateext) runs twice: every generation is read, in order."""
    layout.write_config()
    log = layout.logs / "agent.log"

    def write(start: int, count: int) -> None:
        generator.write(str(log), count, start=start, max_chars=400)

    read_first_generation(layout, daemon_factory, write)
    write(PER, PER)  # the first generation goes on while the daemon is down
    logrotate(layout, f"create\n  {DATEEXT}")
    write(2 * PER, PER)  # a generation created and rotated away while the daemon is down
    next_second()
    logrotate(layout, f"create\n  {DATEEXT}")
    write(3 * PER, PER)
    assert len(list(layout.logs.glob("agent.log-*"))) == 2

    records = read_the_rest(layout, daemon_factory, 4 * PER)
    Ledger.compare(ids(4 * PER), records).assert_exact()
    assert_in_order(records, 4 * PER)


def test_copytruncate_rotations_while_stopped_lose_nothing(layout, daemon_factory, appender):
    """Stopped; a writer that keeps its O_APPEND descriptor goes on; logrotate copytruncate (dateext) twice."""
    layout.write_config()
    write = appender
    read_first_generation(layout, daemon_factory, write)
    write(PER, PER)
    logrotate(layout, f"copytruncate\n  {DATEEXT}")
    write(2 * PER, PER)
    next_second()
    logrotate(layout, f"copytruncate\n  {DATEEXT}")
    write(3 * PER, PER)

    records = read_the_rest(layout, daemon_factory, 4 * PER)
    Ledger.compare(ids(4 * PER), records).assert_exact()
    assert_in_order(records, 4 * PER)


@pytest.mark.parametrize("stop", ["kill -9", "SIGTERM"])
def test_a_stop_right_after_a_copytruncate_reads_its_copy_neither_again_nor_never(
    layout, daemon_factory, appender, stop
):
    """Running and caught up; logrotate copytruncate; new lines read and committed; kill -9 (or a stop) at once.

    The new content's saved position replaced the old content's, and the copy may not have been
    found yet (its name matches no pattern): the old content's fingerprint and read offset are
    saved with the new position, so the next start reads the copy only past them (it read all
    of it again before: every record of the first generation twice).
    """
    layout.write_config()
    write = appender
    write(0, PER)
    daemon = new_daemon(layout, daemon_factory).start()
    wait_for(lambda: len(layout.records()) >= PER, what="the first generation")
    logrotate(layout, "copytruncate")
    write(PER, 10)
    wait_for(lambda: len(layout.records()) >= PER + 10, what="the lines after the truncate")
    if stop == "kill -9":
        daemon.kill()
    else:
        assert daemon.stop() == 0
    write(PER + 10, PER)

    records = read_the_rest(layout, daemon_factory, 2 * PER + 10)
    Ledger.compare(ids(2 * PER + 10), records).assert_exact()


RATE = 2000  # lines/s, one write() each: CI-sized (the chaos run uses 5,000)
ROTATIONS = 8
BETWEEN = 600  # lines between two rotations
MAX_LOST_PER_ROTATION = 3


def test_copytruncate_loses_at_most_three_lines_per_rotation(layout, daemon_factory):
    """Lines written between logrotate's copy and its truncate exist only in the original until the
    truncate: a caught-up reader reads them there. No duplicates, and at most 3 lost per rotation.

    How robust: the copy guard's helper must get a CPU within a millisecond or two of each write
    while logrotate has the file open. It runs at nice -10 where allowed (as root here): with both
    cores kept busy by two other processes, 15 runs of this test in a row passed (2026-12-05). Before
    the helper, on this machine loaded to 5-8, one rotation in 8-16 lost 5-17 lines and one such
    rotation per run was tolerated; a reader ~100 ms late (logferry before inotify) lost more than 3
    in three rotations of 8 at this rate, and 25 per rotation on average at 5,000 lines/s
    (tools/chaos.py).
    """
    layout.write_config()
    total = BETWEEN * (ROTATIONS + 1)
    with new_daemon(layout, daemon_factory) as daemon:
        writer = PacedWriter(layout.logs / "agent.log", total, RATE)
        writer.start()
        for n in range(1, ROTATIONS + 1):
            wait_for(partial(lambda w, t: w.written >= t, writer, n * BETWEEN), interval=0.005, what="writer")
            logrotate(layout, "copytruncate")
            writer.mark()
        writer.join(60)
        assert writer.error is None
        wait_for(lambda: caught_up(layout), timeout=30, what="catch-up")
        assert daemon.stop() == 0
    ledger = Ledger.compare(ids(total), layout.records())
    assert not ledger.duplicated and not ledger.unexpected
    lost = sorted(int(i.split("-")[1]) for i in ledger.lost)
    per_rotation = lost_per_rotation(lost, writer.marks)
    assert sum(per_rotation) == len(lost), f"lost after the last rotation: {lost}"
    assert max(per_rotation, default=0) <= MAX_LOST_PER_ROTATION, f"lost per rotation: {per_rotation}"


def caught_up(layout: Layout) -> bool:
    live: Path = layout.logs / "agent.log"
    return layout.saved_offset(live) == live.stat().st_size and not layout.buffered_chunks()
