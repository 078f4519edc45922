"""kill -9 at random moments, then restart: every record arrives exactly once."""

from __future__ import annotations

import random
from functools import partial

import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Ledger, wait_for
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration


def delivered_at_least(layout, count: int) -> bool:
    return len(layout.records()) >= count


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "page-cache"])
def test_sigkill_mid_stream_then_restart_loses_and_duplicates_nothing(layout, daemon_factory, fsync):
    # Small chunks and a quick flush put every stage (reading, committing, enqueueing,
    # delivering) in flight at any moment the kill can land. Without fsync the kernel
    # still holds every write of a killed process: the guarantee is the same.
    layout.write_config(buffer={"chunk_limit_bytes": 256 * 1024, "flush_interval": 0.05}, fsync=fsync)
    rng = random.Random(20261127)
    backlog, live = 20_000, 6000
    generator.write(str(layout.logs / "agent.log"), backlog, max_chars=800)
    writer = AgentWriter(layout.logs / "agent.log", live, start=backlog, pause=0.001, max_chars=800)
    writer.start()
    total = backlog + live
    for kill_at in sorted(rng.sample(range(1000, total - 1000), 3)):
        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(delivered_at_least, layout, kill_at), what=f"{kill_at} records before the kill")
        daemon.kill()
    writer.join(60)
    assert writer.error is None
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= total, timeout=60, what="all records after restarts")
        assert daemon.stop() == 0
    ledger = Ledger.compare([generator.request_id(1, n) for n in range(total)], layout.records())
    ledger.assert_exact()
