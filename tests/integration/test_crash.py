"""kill -9 at random moments, then restart: every record arrives exactly once."""

from __future__ import annotations

import contextlib
import random
from functools import partial
from pathlib import Path

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Ledger, wait_for
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration


def delivered_at_least(layout, count: int) -> bool:
    return len(layout.records()) >= count


def children(pid: int) -> set[int]:
    """The daemon's parse workers among the live child processes of ``pid`` (the copy guard's helper is
    a child too)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found |= {int(child) for child in task.read_text().split()}
    return {child for child in found if b"pipeline.runtime.parse_worker" in _cmdline(child)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # exited meanwhile
        return b""


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)}


def no_one_alive(pids: set[int]) -> bool:
    return not alive(pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.mark.parametrize(("fsync", "workers"), [(True, 0), (False, 0), (True, 2)],
                         ids=["fsync", "page-cache", "parse-workers"])
def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(layout, daemon_factory, fsync, workers):
    # Small chunks and a quick flush put every stage (reading, committing, enqueueing,
    # delivering) in flight at any moment the kill can land. Without fsync the kernel
    # still holds every write of a killed process: the guarantee is the same. With parse
    # workers, blocks are in flight in other processes too: killing the daemon must lose
    # none of them (they are read again) and leave no worker behind.
    layout.write_config(buffer={"chunk_limit_bytes": 256 * 1024, "flush_interval": 0.05}, fsync=fsync,
                        parse_workers=workers)
    rng = random.Random(20261127)
    backlog, live = 20_000, 6000
    generator.write(str(layout.logs / "agent.log"), backlog, max_chars=800)
    writer = AgentWriter(layout.logs / "agent.log", live, start=backlog, pause=0.001, max_chars=800)
    writer.start()
    total = backlog + live
    for run, kill_at in enumerate(sorted(rng.sample(range(1000, total - 1000), 3))):
        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(delivered_at_least, layout, kill_at), what=f"{kill_at} records before the kill")
        assert daemon.proc is not None
        workers_of_daemon = children(daemon.proc.pid)
        assert len(workers_of_daemon) == workers
        if workers and run == 0:  # and they did the parsing, not the loop (a restarted one may not have yet)
            assert orjson.loads(layout.http("/status")[1])["parse_workers"]["blocks_in_workers"] > 0
        daemon.kill()
        wait_for(partial(no_one_alive, workers_of_daemon), timeout=10, what="the parse workers to exit")
    writer.join(60)
    assert writer.error is None
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= total, timeout=60, what="all records after restarts")
        assert daemon.stop() == 0
    ledger = Ledger.compare([generator.request_id(1, n) for n in range(total)], layout.records())
    ledger.assert_exact()
