"""Tail → parse → enrich → buffer → file output, on the real daemon process."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Ledger, wait_for

pytestmark = pytest.mark.integration


def ids(count: int, start: int = 0, seed: int = 1) -> list[str]:
    return [generator.request_id(seed, n) for n in range(start, start + count)]


def test_every_record_arrives_once_enriched_and_bad_lines_are_dead_lettered(layout, daemon_factory):
    layout.write_config()
    log = layout.logs / "agent.log"
    generator.write(str(log), 3000, bad_every=100, max_chars=3000)
    originals = {r["request_id"]: r for r in generator.records(3000, max_chars=3000)}
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 3000 and len(layout.dead_letters()) >= 30, what="3000 records")
        status = orjson.loads(layout.http("/status")[1])
        assert daemon.stop() == 0
    assert status["dead_letter_records"] == 30 and status["sources"]["agent"]["dead_lines"] == 30, "each counted once"
    records = layout.records()
    Ledger.compare(originals, records).assert_exact()
    for record in records:
        added = {k: record.pop(k) for k in ("hostname", "ingested_at", "tag")}
        assert record == originals[record["request_id"]]
        assert added["hostname"] == socket.gethostname()
        assert added["tag"] == "ai.interactions"
        assert added["ingested_at"].endswith("Z") and len(added["ingested_at"]) == 24
    dead = layout.dead_letters()
    assert len(dead) == 30
    assert {d["reason"].split(":")[0] for d in dead} == {
        "invalid JSON", "invalid UTF-8", "not a JSON object", "empty line"
    }
    raw = log.read_bytes()
    for entry in dead:  # each entry points at the bad line in the source file
        end = raw.index(b"\n", entry["offset"])
        line = raw[entry["offset"] : end]
        assert line == entry.get("line", "").encode() or "line_base64" in entry


def test_files_appearing_later_partial_lines_and_appends(layout, daemon_factory):
    layout.write_config()
    with new_daemon(layout, daemon_factory) as daemon:
        lines = list(generator.lines(200, max_chars=500))
        path = layout.logs / "late.log"
        with path.open("ab") as out:
            out.write(b"".join(lines[:100]))
            out.write(lines[100][:20])  # half a line: must wait for its newline
            out.flush()
            wait_for(lambda: len(layout.records()) >= 100, what="first 100")
            out.write(lines[100][20:] + b"".join(lines[101:]))
        wait_for(lambda: len(layout.records()) >= 200, what="all 200")
        assert daemon.stop() == 0
    Ledger.compare(ids(200), layout.records()).assert_exact()
    assert layout.dead_letters() == []


def test_event_time_decides_the_output_file(layout, daemon_factory):
    layout.write_config()
    hour = 3600
    base = 1_795_000_000 // hour * hour
    rows = [{"request_id": f"r{n}", "timestamp": base + n * 1800 + 1, "input": "x", "output": "y"} for n in range(4)]
    rows.append({"request_id": "iso", "timestamp": "2026-11-18T12:30:00Z", "input": "x", "output": "y"})
    (layout.logs / "agent.log").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 5, what="5 records")
        daemon.stop()
    by_file = {p.name: [orjson.loads(x)["request_id"] for x in p.read_bytes().splitlines()]
               for p in layout.out.iterdir()}
    assert by_file == {
        "20261118-11.jsonl": ["r0", "r1"],
        "20261118-12.jsonl": ["r2", "r3", "iso"],
    }


def test_sigterm_stops_cleanly_and_a_restart_reads_nothing_twice(layout, daemon_factory):
    layout.write_config()
    log = layout.logs / "agent.log"
    generator.write(str(log), 500, max_chars=1000)
    daemon = new_daemon(layout, daemon_factory).start()
    wait_for(lambda: len(layout.records()) >= 500, what="500 records")
    assert daemon.stop(signal.SIGTERM) == 0
    assert "logferry stopped" in daemon.log()
    generator.write(str(log), 500, start=500, max_chars=1000)
    daemon = new_daemon(layout, daemon_factory).start()
    wait_for(lambda: len(layout.records()) >= 1000, what="1000 records")
    assert daemon.stop(signal.SIGINT) == 0
    Ledger.compare(ids(1000), layout.records()).assert_exact()


def test_flush_at_shutdown_delivers_a_lazy_chunk(layout, daemon_factory):
    layout.write_config(buffer={"flush_mode": "lazy"}, flush_at_shutdown=True)
    generator.write(str(layout.logs / "agent.log"), 100, max_chars=500, t0=4_000_000_000.0)
    daemon = new_daemon(layout, daemon_factory).start()
    positions = layout.state / "positions.json"
    wait_for(lambda: positions.exists() and orjson.loads(positions.read_bytes())["files"], what="positions")
    assert layout.records() == []  # lazy: the window (far in the future) is still open
    assert daemon.stop() == 0
    Ledger.compare(ids(100), layout.records()).assert_exact()


def test_without_flush_at_shutdown_staged_chunks_resume_at_next_start(layout, daemon_factory):
    layout.write_config(buffer={"flush_mode": "lazy"})
    generator.write(str(layout.logs / "agent.log"), 100, max_chars=500, t0=4_000_000_000.0)
    daemon = new_daemon(layout, daemon_factory).start()
    positions = layout.state / "positions.json"
    wait_for(lambda: positions.exists() and orjson.loads(positions.read_bytes())["files"], what="positions")
    assert daemon.stop() == 0
    assert layout.records() == []
    staged = list((layout.state / "buffer" / "debug").glob("*.staged"))
    assert len(staged) == 1
    layout.write_config(buffer={"flush_mode": "interval"})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 100, what="100 records after restart")
        daemon.stop()
    Ledger.compare(ids(100), layout.records()).assert_exact()


def test_sigusr1_flushes_staged_chunks_now(layout, daemon_factory):
    layout.write_config(buffer={"flush_mode": "lazy"})
    generator.write(str(layout.logs / "agent.log"), 50, max_chars=500, t0=4_000_000_000.0)
    with new_daemon(layout, daemon_factory) as daemon:
        positions = layout.state / "positions.json"
        wait_for(lambda: positions.exists() and orjson.loads(positions.read_bytes())["files"], what="positions")
        daemon.signal(signal.SIGUSR1)
        wait_for(lambda: len(layout.records()) >= 50, what="flushed records")
        daemon.stop()
    Ledger.compare(ids(50), layout.records()).assert_exact()


def test_oversized_line_goes_to_dead_letters_with_its_head_kept(layout, daemon_factory):
    layout.write_config(source={"max_line_bytes": 64 * 1024, "read_bytes": 16 * 1024})
    big = b'{"request_id": "big", "input": "' + b"x" * 300_000 + b'"}\n'
    lines = list(generator.lines(20, max_chars=300))
    (layout.logs / "agent.log").write_bytes(b"".join(lines[:10]) + big + b"".join(lines[10:]))
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 20, what="20 records")
        daemon.stop()
    Ledger.compare(ids(20), layout.records()).assert_exact()
    (entry,) = layout.dead_letters()
    assert entry["reason"].startswith("line longer than max_line_bytes")
    assert entry["length"] == len(big) - 1 and entry["truncated"] is True
    assert Path(entry["blob"]).read_bytes() == big[: 64 * 1024]  # the first max_line_bytes are kept


def test_the_client_hook_is_shipped_end_to_end(layout, daemon_factory):
    from datetime import UTC, datetime

    from pipeline import client

    layout.write_config()
    ids: list[str | None] = []
    with client.InteractionLogger(layout.logs / "agent.log") as hook:
        ids.append(hook.log_interaction("What is 2+2?", "4", "gpt-4o", tokens=12, latency_ms=350.0, user_id="u-17"))
        ids.append(hook.log_interaction("odd values", {"when": datetime(2026, 11, 27, tzinfo=UTC), "raw": b"\xff"},
                                        "claude-sonnet-4"))
        with client.timed("gpt-4o-mini", input="hello", logger=hook) as t:
            t.output = "hi"
        ids.append(t.request_id)
    assert hook.errors == 0
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 3, what="3 records from the hook")
        daemon.stop()
    records = {r["request_id"]: r for r in layout.records()}
    assert set(records) == set(ids)
    first = records[ids[0]]
    assert (first["input"], first["output"], first["model"], first["tokens"]) == ("What is 2+2?", "4", "gpt-4o", 12)
    assert first["user_id"] == "u-17" and first["hostname"] == socket.gethostname()
    assert records[ids[2]]["latency_ms"] > 0
    assert layout.dead_letters() == []
