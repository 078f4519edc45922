"""read_from_head = false: the first start begins at the files' ends, once; later starts resume there."""

from __future__ import annotations

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, Ledger, wait_for

pytestmark = pytest.mark.integration


def ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def saved_files(layout: Layout) -> dict[str, int]:
    """path → offset in positions.json, read without waiting: it must be there already."""
    return {f["path"]: f["offset"] for f in orjson.loads((layout.state / "positions.json").read_bytes())["files"]}


def test_lines_written_while_stopped_after_a_quiet_first_run(layout: Layout, daemon_factory: list[Daemon]) -> None:
    layout.write_config(source={"read_from_head": False})
    log = layout.logs / "agent.log"
    generator.write(str(log), 50, max_chars=300)  # there before the first start: never shipped
    daemon = new_daemon(layout, daemon_factory).start()
    # Saved before the daemon said it runs, though no line was read (nothing to commit).
    assert saved_files(layout) == {str(log): log.stat().st_size}
    assert daemon.stop() == 0
    generator.write(str(log), 50, start=50, max_chars=300)  # while stopped
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 50, timeout=30, what="the 50 lines written while stopped")
        assert daemon.stop() == 0
    Ledger.compare(ids(50, start=50), layout.records()).assert_exact()


def test_files_created_after_the_first_start_are_read_whole(layout: Layout, daemon_factory: list[Daemon]) -> None:
    layout.write_config(source={"read_from_head": False})
    daemon = new_daemon(layout, daemon_factory).start()
    assert saved_files(layout) == {}  # no file yet, but the first start is on record
    late = layout.logs / "late.log"
    generator.write(str(late), 30, max_chars=300)  # appears while running
    wait_for(lambda: len(layout.records()) >= 30, timeout=30, what="the file created while running")
    assert daemon.stop() == 0
    stopped = layout.logs / "stopped.log"
    generator.write(str(stopped), 30, start=30, max_chars=300)  # appears while stopped
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 60, timeout=30, what="the file created while stopped")
        assert daemon.stop() == 0
    Ledger.compare(ids(60), layout.records()).assert_exact()
    assert set(saved_files(layout)) == {str(late), str(stopped)}


def test_a_partial_last_line_at_the_first_start_is_not_cut(layout: Layout, daemon_factory: list[Daemon]) -> None:
    layout.write_config(source={"read_from_head": False})
    log = layout.logs / "agent.log"
    lines = list(generator.lines(3, max_chars=300))
    log.write_bytes(lines[0] + lines[1][:10])  # the writer is in the middle of line 1
    daemon = new_daemon(layout, daemon_factory).start()
    assert saved_files(layout) == {str(log): len(lines[0])}  # starts after the last whole line
    assert daemon.stop() == 0
    with log.open("ab") as out:
        out.write(lines[1][10:] + lines[2])
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 2, timeout=30, what="the completed line and the next")
        assert daemon.stop() == 0
    Ledger.compare(ids(2, start=1), layout.records()).assert_exact()
    assert layout.dead_letters() == []


def test_a_crash_right_after_the_first_start_keeps_its_offsets(layout: Layout, daemon_factory: list[Daemon]) -> None:
    """SIGKILL right after the start loses nothing either: the offsets were on disk before "running"."""
    layout.write_config(source={"read_from_head": False})
    log = layout.logs / "agent.log"
    generator.write(str(log), 20, max_chars=300)
    new_daemon(layout, daemon_factory).start().kill()
    generator.write(str(log), 20, start=20, max_chars=300)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 20, timeout=30, what="the 20 lines written after the crash")
        assert daemon.stop() == 0
    Ledger.compare(ids(20, start=20), layout.records()).assert_exact()
