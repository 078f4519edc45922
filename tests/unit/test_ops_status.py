"""`logferry status` as an operator who cannot read the service's 0750 state directory."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path

import orjson

from pipeline.config import Settings, settings_from_dict
from pipeline.runtime import status

NOBODY = 65534


def settings(tmp_path: Path, listen: str = "127.0.0.1:9428") -> Settings:
    return settings_from_dict({
        "state_dir": str(tmp_path / "state"), "health": {"listen": listen},
        "sources": {"agent": {"type": "tail", "paths": [str(tmp_path / "*.log")], "tag": "ai"}},
        "outputs": {"debug": {"type": "file", "path": str(tmp_path / "out.jsonl")}},
    })


def as_outsider(state: Path, work: Callable[[], str]) -> str:
    """``work()`` run by a user who cannot read ``state``: nobody (a forked child) if we are root."""
    if os.geteuid() != 0:
        state.chmod(0o000)
        try:
            return work()
        finally:
            state.chmod(0o750)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, report through the pipe, never return into pytest
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, work().encode())
        except Exception:  # noqa: BLE001 (shown to the parent, which fails the test)
            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    _, code = os.waitpid(pid, 0)
    assert code == 0, out
    return out


def test_an_unreadable_state_directory_is_named_with_the_fix(tmp_path):
    config = settings(tmp_path)
    state = config.state_dir
    (state / "buffer" / "debug").mkdir(parents=True)
    (state / "http.address").write_text("127.0.0.1:45678\n")
    state.chmod(0o750)
    text = as_outsider(state, lambda: status.render_stopped(config, status.endpoint(config)))
    lines = text.splitlines()
    # The written address cannot be read: the configured one is tried instead.
    assert lines[0] == "logferry: not running (no answer at 127.0.0.1:9428)"
    assert lines[1].startswith(f"cannot read the state directory {state}: Permission denied; ")
    assert "sudo logferry status" in lines[1] and "usermod -aG" in lines[1]
    assert len(lines) == 2


def test_a_readable_state_directory_is_summarised(tmp_path):
    config = settings(tmp_path)
    log = tmp_path / "agent.log"
    log.write_bytes(b"x" * 2048)
    config.state_dir.mkdir()
    files = [{"path": str(log), "offset": 1024}, {"path": str(tmp_path / "gone.log"), "offset": 5}]
    (config.state_dir / "positions.json").write_bytes(orjson.dumps({"files": files}))
    (config.state_dir / "http.address").write_text("127.0.0.1:45678\n")
    assert status.endpoint(config) == "127.0.0.1:45678"
    text = status.render_stopped(config, "127.0.0.1:45678")
    assert "output debug: 0 chunks (0 B) buffered, 0 set aside" in text
    assert f"{log}: lag 1.0 KiB" in text and "gone.log: gone (rotated away)" in text


def test_no_state_directory_yet(tmp_path):
    config = settings(tmp_path, listen="")
    assert status.endpoint(config) is None
    assert status.render_stopped(config, None).splitlines() == [
        "logferry: not running (no answer at no endpoint configured)",
        f"no state directory {config.state_dir} yet (the daemon has not run)",
    ]


def test_a_paused_file_is_not_shown_as_stalled():
    files = [{"path": "/a.log", "lag_bytes": 10, "stalled": False, "paused": True},
             {"path": "/b.log", "lag_bytes": 10, "stalled": True, "paused": False}]
    snap = {"healthy": False, "problems": ["buffer full, sources paused until an output delivers"], "paused": True,
            "sources": {"agent": {"tag": "ai", "records": 1, "dead_lines": 0, "files": files, "unreadable": []}},
            "outputs": {}}
    text = status.render_running(snap)
    assert "/a.log: lag 10 B  PAUSED (buffer full)" in text and "/b.log: lag 10 B  STALLED" in text


def test_a_kafka_source_shows_its_group_membership():
    partition = {"path": "kafka://t/0", "lag": 3, "committed": 7, "batches_in_flight": 2}
    sources = {
        "bus": {"tag": "ai", "records": 7, "dead_lines": 0, "files": [], "partitions": [partition],
                "instance_id": "logferry-idx-1-bus-0a1b2c3d"},
        "audit": {"tag": "ai", "records": 0, "dead_lines": 0, "files": [], "partitions": [], "instance_id": None},
    }
    text = status.render_running({"healthy": True, "problems": [], "paused": False, "sources": sources, "outputs": {}})
    assert "  group member: static, instance id logferry-idx-1-bus-0a1b2c3d" in text.splitlines()
    assert "  group member: dynamic" in text.splitlines()
    assert "  kafka://t/0: lag 3 messages (committed to offset 7; 2 batches on their way to the buffers)" in (
        text.splitlines())
