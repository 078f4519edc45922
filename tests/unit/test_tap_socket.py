"""The tap's socket: 0660 from the start, a stale one replaced, anything else left alone; where it lives."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest

from pipeline.config import settings_from_dict
from pipeline.runtime.tap import TapHub
from pipeline.runtime.tap_socket import ADDRESS_FILE, bind, socket_path, start_tap_socket

MINIMAL = {"sources": {"a": {"type": "tail", "paths": ["/nonexistent/*.log"], "tag": "a"}},
           "outputs": {"o": {"type": "file", "path": "/nonexistent/out.jsonl"}}}


def test_the_socket_is_0660_in_a_0750_directory_whatever_the_umask(tmp_path: Path) -> None:
    before = os.umask(0)
    try:
        sock = bind(tmp_path / "run" / "tap.sock")
    finally:
        os.umask(before)
    with sock:
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "tap.sock").st_mode) == 0o660
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o750


def test_a_socket_left_by_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "tap.sock"
    bind(path).close()  # bound, never listening, closed: what kill -9 leaves
    with bind(path):
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_a_live_socket_or_another_file_is_not_taken_over(tmp_path: Path) -> None:
    live = tmp_path / "live.sock"
    with bind(live) as serving:
        serving.listen()
        with pytest.raises(OSError, match="another process is serving on it"):
            bind(live)
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    with pytest.raises(OSError, match="is not a socket"):
        bind(other)
    assert other.read_text() == "keep me"


def test_where_the_socket_lives(tmp_path: Path) -> None:
    settings = settings_from_dict({**MINIMAL, "state_dir": str(tmp_path)})
    assert socket_path(settings, {}) == tmp_path / "tap.sock"
    assert socket_path(settings, {"RUNTIME_DIRECTORY": "/run/logferry:/run/other"}) == Path("/run/logferry/tap.sock")
    configured = settings_from_dict({**MINIMAL, "tap": {"socket": "/srv/tap.sock"}})
    assert socket_path(configured, {"RUNTIME_DIRECTORY": "/run/logferry"}) == Path("/srv/tap.sock")


def test_until_listen_every_connection_is_refused(tmp_path: Path) -> None:
    """bind() creates the file with the umask's mode; chmod follows; only then listen(): no window."""
    with bind(tmp_path / "tap.sock"), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        with pytest.raises(ConnectionRefusedError):
            client.connect(str(tmp_path / "tap.sock"))


def test_a_tap_whose_address_cannot_be_written_is_not_left_serving(tmp_path: Path) -> None:
    """The daemon reports the tap unavailable and goes on without it: nothing may answer on the socket then."""
    (tmp_path / ADDRESS_FILE).mkdir()  # write_atomic cannot replace a directory

    async def start() -> None:
        with pytest.raises(IsADirectoryError):
            await start_tap_socket(tmp_path / "tap.sock", TapHub({}), tmp_path)
        # A socket left listening accepts connect() in the kernel, whether or not the loop runs.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
                client.connect(str(tmp_path / "tap.sock"))

    asyncio.run(start())
