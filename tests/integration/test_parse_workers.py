"""parse_workers: a backlog parsed in worker processes arrives exactly once, in file order, with its bad lines
dead-lettered; a worker killed mid-backlog loses nothing (its blocks are parsed by the daemon) and shows in
/status and /metrics."""

from __future__ import annotations

import os
import signal
from typing import Any

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.integration.test_crash import children
from tests.integration.test_operations import metric_values
from tests.support.daemon import Layout, Ledger, wait_for

pytestmark = pytest.mark.integration


def status(layout: Layout) -> dict[str, Any]:
    snapshot: dict[str, Any] = orjson.loads(layout.http("/status")[1])
    return snapshot


def test_a_backlog_through_parse_workers_then_one_killed(layout, daemon_factory):
    layout.write_config(parse_workers=2)
    log = layout.logs / "agent.log"
    first, second = 6000, 20000
    generator.write(str(log), first, bad_every=500, max_chars=2000)  # ~8 MB: many 1 MiB blocks
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= first, what="the first backlog")
        workers = status(layout)["parse_workers"]
        assert workers["configured"] == 2 and workers["alive"] == 2
        assert workers["blocks_in_workers"] >= 4, workers

        assert daemon.proc is not None
        victim = min(children(daemon.proc.pid))
        os.kill(victim, signal.SIGSTOP)  # it takes blocks of the second backlog and answers none
        generator.write(str(log), second, start=first, bad_every=500, max_chars=2000)
        wait_for(lambda: status(layout)["parse_workers"]["waiting"][str(victim)] >= 1,
                 what="blocks sent to the stopped worker")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(layout.records()) >= first + second, what="the second backlog, one worker killed")
        wait_for(lambda: status(layout)["parse_workers"]["alive"] == 1, what="the killed worker out of the pool")
        values = metric_values(layout.http("/metrics")[1].decode())
        assert values[("logferry_parse_workers_alive", ())] == 1
        assert values[("logferry_parse_blocks_total", (("where", "worker"),))] >= 4
        assert f"parse worker {victim} failed (exit code -9" in daemon.log()
        assert "blocks are parsed in the daemon" in daemon.log()
        assert daemon.stop() == 0

    records = layout.records()
    Ledger.compare([generator.request_id(1, n) for n in range(first + second)], records).assert_exact()
    assert [r["seq"] for r in records] == list(range(first + second)), "records in file order"
    assert all(r["hostname"] and r["tag"] == "ai.interactions" for r in records), "enriched as on the loop"
    dead = layout.dead_letters()
    assert len(dead) == (first + second) // 500 and all(d["reason"] for d in dead)
    assert sorted(d["offset"] for d in dead) == [d["offset"] for d in sorted(dead, key=lambda d: d["offset"])]
