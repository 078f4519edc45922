"""parse_workers: a backlog parsed in worker processes arrives exactly once, in file order, with its bad lines
dead-lettered; a worker killed mid-backlog loses nothing (its blocks are parsed by the daemon) and shows in
/status and /metrics; the workers run a redact transform for one output and not the other, exactly once
across kill -9."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.integration import test_redact_routing as routing
from tests.integration.test_crash import children
from tests.integration.test_operations import metric_values
from tests.support.daemon import Layout, Ledger, wait_for
from tests.support.elasticsearch import Cluster, all_documents, dropping_indices

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


@pytest.fixture
def cluster(es_url: str) -> Iterator[Callable[[str], Cluster]]:
    with dropping_indices(es_url) as use:
        yield use


def test_workers_redact_for_elasticsearch_and_keep_the_archive_raw_exactly_once_across_kill_9(
    layout, daemon_factory, cluster, es_url, tmp_path
):
    es = cluster("redact-it")
    key_file = tmp_path / "redact.key"
    key_file.write_text("test-key\n")
    routing.config(layout, es_url, key_file, parse_workers=2)
    total = 6000
    log = layout.logs / "agent.log"
    routing.write_records(log, total, max_chars=2000)  # ~8 MB: many 1 MiB blocks, each a worker's
    with log.open("ab") as out:  # a bad line leaking an address: stored masked, as the loop masks it
        out.write(b'{"input": "mail ' + routing.secrets(0)["email"].encode() + b'" broken\n')
    leaking = total // 5
    daemon = new_daemon(layout, daemon_factory).start()
    # Every record processed (the workers' redactions all counted in the daemon), and some in the cluster.
    wait_for(lambda: status(layout)["transforms"]["pii"]["redactions"]["email"] == leaking + 1, timeout=60,
             what=f"every record redacted:\n{daemon.log()[-3000:]}")
    wait_for(partial(routing.grew, es, 300), timeout=60, interval=0.05,
             what=f"documents before the kill:\n{daemon.log()[-3000:]}")
    snapshot = status(layout)
    daemon.kill()
    assert es.count(routing.PATTERN) < total, "killed mid-stream"
    assert snapshot["parse_workers"]["blocks_in_workers"] >= 4, snapshot["parse_workers"]
    # Counted once each, wherever they ran: every leaking record leaks one of each kind, and the bad
    # line's address was masked in its dead letter (by the daemon: that one is the +1).
    counts = snapshot["transforms"]["pii"]["redactions"]
    assert counts["openai_key"] == counts["payment_card"] == leaking and counts["email"] == leaking + 1, counts
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: es.count(routing.PATTERN) >= total and len(layout.records()) >= total, timeout=90,
                 interval=0.25, what=f"every record in both outputs:\n{daemon.log()[-3000:]}")
        assert daemon.stop() == 0

    expected = [generator.request_id(1, n) for n in range(total)]
    es.assert_exactly(routing.PATTERN, expected)
    Ledger.compare(expected, layout.records()).assert_exact()
    documents = {doc["request_id"]: doc for doc in all_documents(es_url, routing.PATTERN)}
    leaked = {s for n in range(0, total, 5) for s in routing.secrets(n).values()}
    search_text = orjson.dumps(list(documents.values())).decode()
    assert not [s for s in leaked if s in search_text], "a secret reached the search cluster"
    assert not [s for s in leaked if s in "".join(d.log() for d in daemon_factory)], "a secret in the log"
    seq5, seq12 = generator.request_id(1, 5), generator.request_id(1, 12)
    assert documents[seq5]["redactions"] == {"email": 1, "openai_key": 1, "payment_card": 1}
    assert documents[seq5]["input"].startswith("mail [HMAC:email:")
    raw = {record["request_id"]: record for record in layout.records()}
    assert raw[seq5]["input"].startswith(f"mail {routing.secrets(5)['email']} ") and "redactions" not in raw[seq5]
    assert documents[seq12]["input"] == raw[seq12]["input"] and "redactions" not in documents[seq12]
    (dead,) = layout.dead_letters()
    assert routing.secrets(0)["email"] not in orjson.dumps(dead).decode() and "[HMAC:email:" in dead["line"]
