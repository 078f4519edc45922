"""The daemon keeps what it built at start out of the collector's passes while it runs, and only then.

Forward (and Kafka) records are decoded into dicts that live until their commit, so full
collections come often; each one walked every object made at start until they were frozen
(see ``pipeline.runtime.app.freeze_startup_heap``).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import msgpack
import pytest

from pipeline.config import settings_from_dict
from pipeline.runtime.app import Daemon
from pipeline.runtime.systemd import Notifier


class ReadyEvent(Notifier):
    """Sets ``running`` where the daemon tells systemd it is ready."""

    def __init__(self) -> None:
        super().__init__({})
        self.running = asyncio.Event()

    def ready(self, status: str) -> None:
        self.running.set()


@pytest.mark.asyncio
async def test_the_start_heap_is_frozen_while_the_daemon_runs_and_released_after(tmp_path: Path) -> None:
    settings = settings_from_dict({
        "state_dir": str(tmp_path / "state"),
        "health": {"listen": ""},
        "tap": {"enabled": False},
        "sources": {"fluent": {"type": "forward", "bind": "127.0.0.1", "port": 0, "heartbeat": False}},
        "outputs": {"out": {"type": "file", "path": str(tmp_path / "out" / "records.jsonl")}},
    })
    gc.unfreeze()  # whatever an earlier test left
    notifier = ReadyEvent()
    daemon = Daemon(settings, notifier=notifier)
    stop = asyncio.Event()
    running = asyncio.create_task(daemon.run(stop))
    try:
        await asyncio.wait_for(notifier.running.wait(), 30)
        assert gc.get_freeze_count() > 0 and daemon.topology is not None
        address = daemon.topology.sources[0].address  # type: ignore[attr-defined]
        reader, writer = await asyncio.open_connection(*address)
        writer.write(msgpack.packb(["app", [[1_700_000_000, {"n": 1}]], {"chunk": "c1"}]))
        ack = msgpack.unpackb(await asyncio.wait_for(reader.read(100), 10))
        assert ack == {"ack": "c1"}  # records still flow with the heap frozen
        writer.close()
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    assert gc.get_freeze_count() == 0
