"""The state directory's disk fills up during buffer writes and position saves, then space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Layout, Ledger, wait_for

pytestmark = pytest.mark.integration
COUNT = 4000


@pytest.fixture
def small_state_disk(layout: Layout) -> Iterator[Path]:
    """A 2 MiB tmpfs as the state directory (needs root, as CI and the dev machines run)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    layout.state.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(layout.state)], check=True)
    try:
        yield layout.state
    finally:
        subprocess.run(["umount", "-l", str(layout.state)], check=True)


def test_disk_full_pauses_without_loss_and_recovers_when_space_returns(layout, daemon_factory, small_state_disk):
    blocker = layout.out / "blocked"
    blocker.write_text("the output cannot deliver until this is gone")
    layout.write_config(
        output={"path": str(blocker / "%Y%m%d-%H.jsonl")}, source={"read_bytes": 64 * 1024},
        buffer={"chunk_limit_bytes": 128 * 1024, "total_limit_bytes": 64 * 1024 * 1024, "retry_limit": 1000,
                "retry_max_interval": 0.2},
    )
    generator.write(str(layout.logs / "agent.log"), COUNT, max_chars=600)  # ~5 MB: more than the disk holds
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: "No space left on device" in daemon.log(), what="the disk to fill")
        assert "nothing was lost, retrying" in daemon.log()
        status, body = layout.http("/health")
        assert status == 503 and b"cannot write to the state directory" in body
        blocker.unlink()  # the output drains its buffer, which frees the disk
        wait_for(lambda: len(layout.records()) >= COUNT, timeout=90, what="every record after space returned")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(COUNT)], layout.records()).assert_exact()
