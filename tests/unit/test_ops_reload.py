"""Reload pre-checks, sd_notify's reload messages, and what an output reports at start."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings, settings_from_dict
from pipeline.errors import ConfigError, RetryableError
from pipeline.runtime.app import check_resources
from pipeline.runtime.systemd import Notifier
from tests.unit.test_flusher import FakeOutput, setup


def with_search(tmp_path: Path, **search: Any) -> Settings:
    return settings_from_dict({
        "state_dir": str(tmp_path / "state"),
        "sources": {"agent": {"type": "tail", "paths": [str(tmp_path / "*.log")], "tag": "ai"}},
        "outputs": {"search": {"type": "elasticsearch", "hosts": ["https://127.0.0.1:9200"], "index": "ai",
                               **search}},
    })


def test_check_resources_reads_every_secret_and_file(tmp_path):
    secret, ca = tmp_path / "password", tmp_path / "ca.pem"
    secret.write_text("s3cret\n")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    check_resources(with_search(tmp_path, username="logferry", password_file=str(secret), ca_file=str(ca)))


@pytest.mark.parametrize("key", ["password_file", "api_key_file", "ca_file"])
def test_check_resources_names_a_missing_file_by_its_key(tmp_path, key):
    missing = tmp_path / "missing"
    extra = {"username": "logferry"} if key == "password_file" else {}
    with pytest.raises(ConfigError, match=f"outputs.search.{key}: cannot read {missing}: No such file"):
        check_resources(with_search(tmp_path, **{key: str(missing)}, **extra))


def test_reloading_then_ready_reach_systemd(tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": address})
        notifier.reloading()
        notifier.ready("running")
        reloading = sock.recv(4096).decode().split("\n")
        ready = sock.recv(4096).decode().split("\n")
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].removeprefix("MONOTONIC_USEC=")) > 0
    assert ready == ["READY=1", "STATUS=running"]


class FailedStart(FakeOutput):
    """An output whose check at start found the destination unusable."""

    start_error: str | None = None

    async def start(self) -> None:
        self.start_error = "bucket check failed for archive: NoSuchBucket (HTTP 404)"


@pytest.mark.asyncio
async def test_a_failed_start_check_is_the_outputs_error_until_a_delivery(tmp_path):
    flusher, buffer, clock = setup(tmp_path, FailedStart(RetryableError("down")))
    await flusher.start()
    assert flusher.failing_since is not None and flusher.stats.failed_attempts == 0
    assert flusher.stats.last_error == "start check failed: bucket check failed for archive: NoSuchBucket (HTTP 404)"
    await flusher.deliver(await buffer.dequeue())  # fails: retried
    assert flusher.stats.chunk_retries == 1 and flusher.stats.last_error == "RetryableError: down"
    clock.advance(60)
    await flusher.deliver(await buffer.dequeue())
    assert flusher.failing_since is None


@pytest.mark.asyncio
async def test_an_output_without_a_start_check_starts_clean(tmp_path):
    flusher, _, _ = setup(tmp_path, FakeOutput())
    await flusher.start()
    assert flusher.failing_since is None and flusher.stats.last_error is None and flusher.rejected_records == 0
