"""Operating the daemon: metrics, health, status, reload, sd_notify, and the systemd unit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import REPO, Ledger, wait_for

pytestmark = pytest.mark.integration


def ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_parse_and_count_what_was_sent(layout, daemon_factory):
    layout.write_config()
    generator.write(str(layout.logs / "agent.log"), 500, bad_every=50, max_chars=300)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 500, what="500 records")
        status, body = layout.http("/metrics")
        assert status == 200
        values = metric_values(body.decode())
        daemon.stop()
    src, out = (("source", "agent"),), (("output", "debug"),)
    assert values[("logferry_source_records_total", src)] == 500
    assert values[("logferry_source_dead_letters_total", src)] == 10
    assert values[("logferry_output_delivered_records_total", out)] == 500
    assert values[("logferry_output_failed_attempts_total", out)] == 0
    assert values[("logferry_healthy", ())] == 1
    path = str(layout.logs / "agent.log")
    assert values[("logferry_file_lag_bytes", (("path", path), ("source", "agent")))] == 0


def test_failing_output_shows_in_health_and_status(layout, daemon_factory):
    blocker = layout.out / "blocked"
    blocker.write_text("not a directory")
    layout.write_config(output={"path": str(blocker / "%Y%m%d-%H.jsonl")},
                        health={"output_failing_after": 0.5, "check_interval": 0.2},
                        buffer={"retry_max_interval": 0.2})
    generator.write(str(layout.logs / "agent.log"), 50, max_chars=300)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: layout.http("/health")[0] == 503, what="unhealthy")
        wait_for(lambda: "unhealthy: output debug failing" in daemon.log(), what="the problem logged")
        health = orjson.loads(layout.http("/health")[1])
        assert any("output debug failing" in p and "cannot write" in p for p in health["problems"])
        result = subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                                capture_output=True, text=True, cwd=REPO, timeout=30)
        daemon.stop()
    assert result.returncode == 1
    assert "UNHEALTHY" in result.stdout and "output debug: FAILING" in result.stdout
    assert f"cannot write {blocker}" in result.stdout


def test_status_reads_the_state_directory_when_stopped(layout, daemon_factory):
    layout.write_config(buffer={"flush_mode": "lazy"})
    generator.write(str(layout.logs / "agent.log"), 40, max_chars=300, t0=4_000_000_000.0)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: (layout.state / "positions.json").exists(), what="positions")
        daemon.stop()
    result = subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                            capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.returncode == 3
    assert "not running" in result.stdout and "output debug: 1 chunks" in result.stdout


def test_reload_applies_a_new_output_path_and_refuses_an_invalid_config(layout, daemon_factory):
    layout.write_config()
    log = layout.logs / "agent.log"
    generator.write(str(log), 100, max_chars=300)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 100, what="first 100")
        drop_in = layout.root / "conf.d" / "99-typo.toml"
        drop_in.parent.mkdir()
        drop_in.write_text("[outputs.debug.buffer]\ntimekeyy = 1\n")  # a typo in a drop-in: refused
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "new configuration refused" in daemon.log(), what="refusal")
        assert "outputs.debug.buffer.timekeyy: unknown key" in daemon.log()
        generator.write(str(log), 100, start=100, max_chars=300)  # the old pipeline still runs
        wait_for(lambda: len(layout.records()) >= 200, what="records after the refused reload")
        drop_in.unlink()
        layout.write_config(output={"path": str(layout.out / "reloaded" / "%Y%m%d-%H.jsonl")})
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.log().count("logferry running") == 2, what="the reloaded pipeline")
        generator.write(str(log), 100, start=200, max_chars=300)
        wait_for(lambda: len(layout.records()) >= 300, what="records after the reload")
        assert daemon.stop() == 0
    Ledger.compare(ids(300), layout.records()).assert_exact()
    reloaded = [orjson.loads(x)["request_id"] for p in (layout.out / "reloaded").iterdir()
                for x in p.read_bytes().splitlines()]
    assert set(reloaded) == set(ids(100, start=200))


def test_sd_notify_ready_watchdog_and_stopping(layout, daemon_factory, tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(10)
        layout.write_config()
        daemon = new_daemon(layout, daemon_factory, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
        daemon.start()
        messages = [sock.recv(4096).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1\nSTATUS=running")
        assert any(m == "WATCHDOG=1" for m in messages[1:])
        daemon.signal(signal.SIGTERM)
        while "STOPPING=1" not in (message := sock.recv(4096).decode()):
            assert message.startswith(("STATUS=", "WATCHDOG=1")), message
        assert daemon.proc is not None and daemon.proc.wait(30) == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies(tmp_path):
    unit = (REPO / "systemd" / "logferry.service").read_text()
    logferry = shutil.which("logferry", path=os.path.dirname(sys.executable))
    assert logferry is not None
    # verify checks that ExecStart= exists: point it at this checkout's logferry
    (tmp_path / "logferry.service").write_text(unit.replace("/usr/local/bin/logferry", logferry))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "logferry.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit


def test_tap_shows_enriched_records_live_filtered_by_tag(layout, daemon_factory):
    layout.write_config()
    tap = [sys.executable, "-m", "pipeline", "tap", "-c", str(layout.config)]
    with new_daemon(layout, daemon_factory) as daemon, \
            subprocess.Popen([*tap, "--tag", "ai.*"], stdout=subprocess.PIPE, cwd=REPO) as viewer, \
            subprocess.Popen([*tap, "--tag", "billing.**"], stdout=subprocess.PIPE, cwd=REPO) as other:
        wait_for(lambda: tap_viewers(layout) == 2, what="two viewers connected")
        generator.write(str(layout.logs / "agent.log"), 20, max_chars=200)
        assert viewer.stdout is not None
        seen = [orjson.loads(viewer.stdout.readline()) for _ in range(20)]
        viewer.terminate()
        other.terminate()
        out, _ = other.communicate(timeout=10)
        daemon.stop()
    assert [r["request_id"] for r in seen] == ids(20)
    assert all(r["tag"] == "ai.interactions" and "ingested_at" in r for r in seen)
    assert out == b""  # its filter matched nothing


def tap_viewers(layout) -> int:
    status, body = layout.http("/status")
    return int(orjson.loads(body)["tap_viewers"]) if status == 200 else 0


def test_unreadable_file_is_reported_once_with_the_fix_and_picked_up_when_readable(layout, daemon_factory):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the daemon without its file-permission override")
    log = layout.logs / "agent.log"
    generator.write(str(log), 30, max_chars=200)
    log.chmod(0o000)
    layout.write_config(source={"rescan_interval": 0.2})
    no_override = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    with new_daemon(layout, daemon_factory, prefix=no_override) as daemon:
        wait_for(lambda: "cannot read file" in daemon.log(), what="the report")
        snapshot = orjson.loads(layout.http("/status")[1])
        assert snapshot["sources"]["agent"]["unreadable"] == [str(log)]
        assert "UNREADABLE" in subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                                              capture_output=True, text=True, cwd=REPO, timeout=30).stdout
        log.chmod(0o644)
        wait_for(lambda: len(layout.records()) >= 30, what="records once readable")
        daemon.stop()
    assert daemon.log().count("cannot read file") == 1
    assert "setfacl -m u:root:r" in daemon.log()
    Ledger.compare(ids(30), layout.records()).assert_exact()


def test_a_stalled_tail_turns_health_red_and_withholds_the_watchdog(layout, daemon_factory, tmp_path):
    # A full buffer (its output blocked) pauses the source: the file grows, its position does not move.
    blocker = layout.out / "blocked"
    blocker.write_text("not a directory")
    layout.write_config(output={"path": str(blocker / "%Y%m%d-%H.jsonl")},
                        buffer={"total_limit_bytes": 64 * 1024, "chunk_limit_bytes": 16 * 1024, "retry_limit": 1000,
                                "retry_max_interval": 0.2},
                        source={"read_bytes": 16 * 1024},
                        health={"stall_after": 1.0, "check_interval": 0.2, "output_failing_after": 3600})
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(10)
        daemon = new_daemon(layout, daemon_factory, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        daemon.start()
        generator.write(str(layout.logs / "agent.log"), 2000, max_chars=300)
        wait_for(lambda: b"grows but its position has not moved" in layout.http("/health")[1],
                 what="the stall to be reported")
        assert layout.http("/health")[0] == 503
        sock.settimeout(0.1)
        while True:  # drain what was sent before the stall was seen
            try:
                sock.recv(4096)
            except TimeoutError:
                break
        sock.settimeout(1.0)
        seen = []
        for _ in range(5):  # watchdog interval is 0.2 s: five STATUS messages, no WATCHDOG=1
            seen.append(sock.recv(4096).decode())
        assert all(m.startswith("STATUS=UNHEALTHY") for m in seen), seen
        blocker.unlink()  # the output recovers, the buffer drains, the tail moves again
        wait_for(lambda: layout.http("/health")[0] == 200, timeout=60, what="healthy again")
        sock.settimeout(5)
        while sock.recv(4096) != b"WATCHDOG=1":
            pass
        daemon.stop()
    Ledger.compare(ids(2000), layout.records()).assert_exact()
