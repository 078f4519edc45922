"""Operating the daemon: metrics, health, status, reload, sd_notify, and the systemd unit."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import REPO, Ledger, read_lines, render_toml, streaming, wait_for
from tests.support.s3server import CREDENTIALS, free_port

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
        src, out = (("source", "agent"),), (("output", "debug"),)
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        def delivered_counted() -> bool:
            # The records are in the file before the flusher, back from its write, counts them (a CI run read 0).
            nonlocal values
            status, body = layout.http("/metrics")
            assert status == 200
            values = metric_values(body.decode())
            return values.get(("logferry_output_delivered_records_total", out)) == 500

        wait_for(delivered_counted, what="the delivered records counted in /metrics")
        daemon.stop()
    assert values[("logferry_source_records_total", src)] == 500
    assert values[("logferry_source_dead_letters_total", src)] == 10
    assert values[("logferry_output_delivered_records_total", out)] == 500
    assert values[("logferry_output_failed_attempts_total", out)] == 0
    assert values[("logferry_output_chunk_retries_total", out)] == 0
    assert values[("logferry_output_rejected_records_total", out)] == 0  # a file takes every record
    assert values[("logferry_sources_paused", ())] == 0
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
        values = metric_values(layout.http("/metrics")[1].decode())
        counter = {name: values[(f"logferry_output_{name}_total", (("output", "debug"),))]
                   for name in ("chunk_retries", "failed_attempts", "dead_chunks")}
        # Every failed attempt is either retried or ends its chunk's retries (set aside).
        assert counter["chunk_retries"] >= 1
        assert counter["chunk_retries"] + counter["dead_chunks"] == counter["failed_attempts"]
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


def guard_helpers(pid: int) -> set[int]:
    """The copy guard's helper processes among ``pid``'s children (one per tail source that follows files)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"guard_helper" in cmdline:
            found.add(int(entry))
    return found


def test_reload_applies_a_new_output_path_and_refuses_an_invalid_config(layout, daemon_factory):
    layout.write_config()
    log = layout.logs / "agent.log"
    generator.write(str(log), 100, max_chars=300)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 100, what="first 100")
        assert daemon.proc is not None
        pid = daemon.proc.pid
        wait_for(lambda: len(guard_helpers(pid)) == 1, what="the tail source's guard helper")
        (first_helper,) = guard_helpers(pid)
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
        # The old pipeline's helper left with it; the new pipeline's tail source has one of its own.
        helpers = guard_helpers(pid)
        assert len(helpers) == 1 and first_helper not in helpers
        assert not Path(f"/proc/{first_helper}").exists()  # exited and reaped (no zombie)
        assert daemon.stop() == 0
        assert not Path(f"/proc/{helpers.pop()}").exists()  # gone with the daemon, not orphaned
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
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit  # `systemctl reload logferry`


def tap_viewer(layout, *args: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``logferry tap`` in the background; stopped on the way out, also when the test fails."""
    return streaming([sys.executable, "-m", "pipeline", "tap", "-c", str(layout.config), *args])


def test_tap_shows_enriched_records_live_filtered_by_tag(layout, daemon_factory):
    layout.write_config()
    with new_daemon(layout, daemon_factory) as daemon, tap_viewer(layout, "--tag", "ai.*") as viewer, \
            tap_viewer(layout, "--tag", "billing.**") as other:
        wait_for(lambda: layout.tap_viewers() == 2, what="two viewers connected")
        generator.write(str(layout.logs / "agent.log"), 20, max_chars=200)
        seen = [orjson.loads(line) for line in read_lines(viewer, 20)]
        other.terminate()
        out, _ = other.communicate(timeout=10)
        daemon.stop()
    assert [r["request_id"] for r in seen] == ids(20)
    assert all(r["tag"] == "ai.interactions" and "ingested_at" in r for r in seen)
    assert out == b""  # its filter matched nothing


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


def drain(sock: socket.socket) -> None:
    """Read and drop every notification already sent."""
    sock.settimeout(0.1)
    while True:
        try:
            sock.recv(4096)
        except TimeoutError:
            return


def test_a_stalled_tail_turns_health_red_and_withholds_the_watchdog(layout, daemon_factory, tmp_path):
    # A real stall: the file grows, nothing holds the sources back on purpose (no full buffer),
    # yet its position does not move, because every commit fails (positions.json cannot be replaced).
    layout.write_config(health={"stall_after": 1.0, "check_interval": 0.2, "output_failing_after": 3600})
    log = layout.logs / "agent.log"
    positions = layout.state / "positions.json"
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        daemon = new_daemon(layout, daemon_factory, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        daemon.start()
        generator.write(str(log), 100, max_chars=300)
        wait_for(lambda: layout.saved_offset(log) == log.stat().st_size, what="the first 100 committed")
        positions.unlink()
        positions.mkdir()  # os.replace() of a file onto a directory fails, for root too
        generator.write(str(log), 100, start=100, max_chars=300)
        wait_for(lambda: b"grows but its position has not moved" in layout.http("/health")[1],
                 what="the stall to be reported")
        assert not orjson.loads(layout.http("/status")[1])["paused"]  # not a full buffer: a stall
        drain(sock)  # what was sent before the stall was seen
        sock.settimeout(1.0)
        seen = [sock.recv(4096).decode() for _ in range(5)]  # one STATUS per 0.2 s, no WATCHDOG=1
        assert all(m.startswith("STATUS=UNHEALTHY") for m in seen), seen
        positions.rmdir()  # the next commit retry succeeds: the tail moves again
        wait_for(lambda: layout.http("/health")[0] == 200, timeout=60, what="healthy again")
        sock.settimeout(5)
        while sock.recv(4096) != b"WATCHDOG=1":
            pass
        assert daemon.stop() == 0
    Ledger.compare(ids(200), layout.records()).assert_exact()


def test_a_full_buffer_during_an_outage_is_a_pause_not_a_stall_and_keeps_the_watchdog(layout, daemon_factory,
                                                                                      tmp_path):
    # The output is blocked: its buffer fills and the committer pauses the source, so the file
    # grows while its position stays put, for far longer than stall_after.
    blocker = layout.out / "blocked"
    blocker.write_text("not a directory")
    layout.write_config(output={"path": str(blocker / "%Y%m%d-%H.jsonl")},
                        buffer={"total_limit_bytes": 64 * 1024, "chunk_limit_bytes": 16 * 1024, "retry_limit": 1000,
                                "retry_max_interval": 0.2},
                        source={"read_bytes": 16 * 1024},
                        health={"stall_after": 1.0, "check_interval": 0.2, "output_failing_after": 3600})
    log = layout.logs / "agent.log"
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        daemon = new_daemon(layout, daemon_factory, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        daemon.start()
        generator.write(str(log), 2000, max_chars=300)
        wait_for(lambda: orjson.loads(layout.http("/status")[1])["paused"], what="the sources to pause")
        drain(sock)
        sock.settimeout(1.0)
        paused_at, pings = time.monotonic(), [time.monotonic()]
        while time.monotonic() - paused_at < 3.0:  # three times stall_after, paused throughout
            if sock.recv(4096) == b"WATCHDOG=1":
                pings.append(time.monotonic())
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert len(pings) >= 8 and max(gaps) < 1.0, gaps  # pinged every 0.2 s all along
        snapshot = orjson.loads(layout.http("/status")[1])
        (entry,) = snapshot["sources"]["agent"]["files"]
        assert snapshot["paused"] and entry["paused"] and not entry["stalled"] and entry["lag_bytes"] > 0
        health = orjson.loads(layout.http("/health")[1])
        assert "buffer full, sources paused until an output delivers" in health["problems"]
        assert not any("position has not moved" in p for p in health["problems"])
        values = metric_values(layout.http("/metrics")[1].decode())
        assert values[("logferry_sources_paused", ())] == 1
        assert values[("logferry_file_stalled", (("path", str(log)), ("source", "agent")))] == 0
        result = subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                                capture_output=True, text=True, cwd=REPO, timeout=30)
        assert f"{log}: lag" in result.stdout and "PAUSED (buffer full)" in result.stdout
        assert "STALLED" not in result.stdout
        blocker.unlink()  # the outage ends: the buffer drains and the source resumes
        wait_for(lambda: len(layout.records()) >= 2000, timeout=60, what="every record after the outage")
        assert daemon.stop() == 0
    assert "position has not moved" not in daemon.log()  # never reported as a stall
    Ledger.compare(ids(2000), layout.records()).assert_exact()


def next_state(sock: socket.socket) -> str:
    """The next notification that is not a STATUS line or a watchdog ping: its first field."""
    while (message := sock.recv(4096).decode()).startswith(("STATUS=", "WATCHDOG=1")):
        pass
    return message.split("\n", 1)[0]


def test_reload_whose_secret_file_is_missing_keeps_the_old_pipeline_and_tells_systemd(layout, daemon_factory,
                                                                                      tmp_path):
    layout.write_config()
    log = layout.logs / "agent.log"
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        daemon = new_daemon(layout, daemon_factory, env={"NOTIFY_SOCKET": address})
        daemon.start()
        assert next_state(sock) == "READY=1"
        generator.write(str(log), 100, max_chars=300)
        wait_for(lambda: len(layout.records()) >= 100, what="first 100")
        drop_in = layout.root / "conf.d" / "50-search.toml"
        drop_in.parent.mkdir()
        missing = tmp_path / "no-such-secret"
        drop_in.write_text(render_toml({"outputs": {"search": {
            "type": "elasticsearch", "hosts": ["http://127.0.0.1:9"], "index": "ai-%Y.%m.%d",
            "username": "logferry", "password_file": str(missing)}}}))
        daemon.signal(signal.SIGHUP)  # valid as a schema: only reading the secret can tell
        assert next_state(sock) == "RELOADING=1"
        assert next_state(sock) == "READY=1"  # the reload is over: the old pipeline runs on
        assert f"outputs.search.password_file: cannot read {missing}" in daemon.log()
        assert "new configuration refused" in daemon.log() and daemon.log().count("logferry running") == 1
        generator.write(str(log), 100, start=100, max_chars=300)
        wait_for(lambda: len(layout.records()) >= 200, what="records after the refused reload")
        drop_in.unlink()
        daemon.signal(signal.SIGHUP)  # a valid reload: no STOPPING=1 while the pipeline restarts
        assert next_state(sock) == "RELOADING=1"
        assert next_state(sock) == "READY=1"
        assert daemon.log().count("logferry running") == 2
        daemon.signal(signal.SIGTERM)
        assert next_state(sock) == "STOPPING=1"
        assert daemon.proc is not None and daemon.proc.wait(30) == 0
    Ledger.compare(ids(200), layout.records()).assert_exact()


def test_a_failed_start_check_shows_in_status_at_once(layout, daemon_factory):
    # Nothing listens on the endpoint's port: the S3 output's bucket check at start fails.
    endpoint = f"http://127.0.0.1:{free_port()}"
    layout.write_config(output={"type": "s3", "bucket": "archive", "endpoint_url": endpoint,
                                "addressing_style": "path", "path": "interactions/", "connect_timeout": 1.0,
                                "read_timeout": 1.0, "request_timeout": 2.0, "max_attempts": 1})
    env = {**CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    with new_daemon(layout, daemon_factory, env) as daemon:  # no record written: no chunk has failed
        wait_for(lambda: (layout.state / "http.address").exists(), what="the status endpoint")
        output = orjson.loads(layout.http("/status")[1])["outputs"]["debug"]
        result = subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                                capture_output=True, text=True, cwd=REPO, timeout=30)
        daemon.stop()
    assert output["failing"] and output["failed_attempts"] == 0
    assert output["last_error"].startswith("start check failed: cannot reach bucket archive: EndpointConnectionError")
    assert "output debug: FAILING" in result.stdout
    assert "last error" in result.stdout and "EndpointConnectionError" in result.stdout


def test_tap_filters_by_output_and_names_the_known_outputs(layout, daemon_factory):
    layout.write_config()
    (layout.root / "conf.d").mkdir()
    (layout.root / "conf.d" / "50-billing.toml").write_text(render_toml({"outputs": {"billing": {
        "type": "file", "path": str(layout.root / "billing" / "%Y%m%d.jsonl"), "match": ["billing.**"]}}}))
    unknown = subprocess.run([sys.executable, "-m", "pipeline", "tap", "-c", str(layout.config), "--output", "search"],
                             capture_output=True, text=True, cwd=REPO, timeout=30)
    assert unknown.returncode == 2
    assert "no output named 'search'; outputs: debug, billing" in unknown.stderr
    with new_daemon(layout, daemon_factory) as daemon, tap_viewer(layout, "--output", "debug") as viewer, \
            tap_viewer(layout, "--output", "billing") as other:
        wait_for(lambda: layout.tap_viewers() == 2, what="two viewers connected")
        generator.write(str(layout.logs / "agent.log"), 20, max_chars=200)
        seen = [orjson.loads(line) for line in read_lines(viewer, 20)]
        wait_for(lambda: len(layout.records()) >= 20, what="the records delivered")
        other.terminate()
        out, _ = other.communicate(timeout=10)
        daemon.stop()
    assert [r["request_id"] for r in seen] == ids(20)
    assert out == b""  # the source's records are not routed to billing


class FakeElasticsearch(http.server.ThreadingHTTPServer):
    """Answers the requests the Elasticsearch output makes, on 127.0.0.1.

    Of every bulk request it refuses each third document as a mapping conflict, with the
    reason quoting the value the way Elasticsearch does ("Preview of field's value: …").
    """

    QUOTED = "quoted-record-content"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeElasticsearchHandler)
        self.rejected = 0
        self.authorization: set[str] = set()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> FakeElasticsearch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def bulk(self, body: bytes) -> dict[str, object]:
        lines = body.splitlines()
        items: list[dict[str, object]] = []
        for n, _ in enumerate(lines[1::2]):
            if n % 3 == 0:
                self.rejected += 1
                error = {"type": "document_parsing_exception",
                         "reason": "[1:2] failed to parse field [tokens] of type [long] in document with id 'x'. "
                                   f"Preview of field's value: '{self.QUOTED}'"}
                items.append({"create": {"status": 400, "error": error}})
            else:
                items.append({"create": {"status": 201}})
        return {"errors": True, "items": items}


class _FakeElasticsearchHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeElasticsearch

    def do_GET(self) -> None:
        if self.path.startswith("/_nodes"):
            self._reply({"nodes": {"n1": {"version": "8.19.0"}}})
        else:
            self._reply({"cluster_name": "fake", "status": "green"})

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.authorization.add(self.headers.get("Authorization", ""))
        self._reply(self.server.bulk(body) if self.path.startswith("/_bulk") else {"acknowledged": True})

    def _reply(self, doc: object) -> None:
        body = orjson.dumps(doc)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # the test needs no access log
        pass


def test_records_refused_one_by_one_are_counted_and_logged_without_their_values(layout, daemon_factory):
    layout.write_config()
    with FakeElasticsearch() as es:
        (layout.root / "conf.d").mkdir()
        (layout.root / "conf.d" / "50-search.toml").write_text(render_toml({"outputs": {"search": {
            "type": "elasticsearch", "hosts": [f"http://elastic:hunter2@127.0.0.1:{es.port}"],
            "index": "ai-%Y.%m.%d", "buffer": {"flush_interval": 0.2}}}}))
        generator.write(str(layout.logs / "agent.log"), 300, max_chars=300)
        with new_daemon(layout, daemon_factory) as daemon:
            search = (("output", "search"),)
            wait_for(lambda: metric_values(layout.http("/metrics")[1].decode()).get(
                ("logferry_output_delivered_records_total", search)) == 300, what="300 records through search")
            values = metric_values(layout.http("/metrics")[1].decode())
            daemon.stop()
    assert es.rejected > 0
    assert values[("logferry_output_rejected_records_total", search)] == es.rejected
    assert values[("logferry_output_rejected_records_total", (("output", "debug"),))] == 0
    entries = [e for e in layout.dead_letters() if e.get("output") == "search"]
    assert len(entries) == es.rejected and all(FakeElasticsearch.QUOTED in e["reason"] for e in entries)
    assert "documents refused by Elasticsearch and dead-lettered" in daemon.log()
    assert FakeElasticsearch.QUOTED not in daemon.log() and "(value left out)" in daemon.log()
    assert f"http://127.0.0.1:{es.port}" in daemon.log() and "hunter2" not in daemon.log()
    assert es.authorization == {"Basic " + base64.b64encode(b"elastic:hunter2").decode()}  # used, not logged
