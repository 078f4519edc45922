"""The forward source with ``parse_workers = 2``: PackedForward chunks decoded in the worker processes are
stored exactly once across a kill -9 of the daemon, acknowledged only once committed, with a record that is
not a map dead-lettered with the peer."""

from __future__ import annotations

import gzip
import os
from collections import Counter
from typing import Any

import msgpack
import orjson
import pytest

from tests.conftest import new_daemon
from tests.support.daemon import Layout, wait_for
from tests.support.elasticsearch import free_port
from tests.support.forward import RawClient, forward_config, wait_listening

pytestmark = pytest.mark.integration

T0 = 1_795_000_000
CHUNKS, PER_CHUNK, IN_FLIGHT = 40, 400, 4
NOT_A_MAP = (7, 5)  # (chunk, entry): a string instead of a record


def chunks() -> list[tuple[str, list[Any]]]:
    """(chunk id, message): ~240 KB of entries each (gzipped every fifth, still over the workers' 64 KiB)."""
    made = []
    for n in range(CHUNKS):
        entries: list[Any] = [[T0 + i, {"request_id": f"w{n}-{i}", "noise": os.urandom(200).hex()}]
                              for i in range(PER_CHUNK)]
        if n == NOT_A_MAP[0]:
            entries[NOT_A_MAP[1]][1] = "just a string"
        raw = b"".join(msgpack.packb(entry) for entry in entries)
        options: dict[str, Any] = {"chunk": f"w-{n}", "size": PER_CHUNK}
        if n % 5 == 3:
            raw, options["compressed"] = gzip.compress(raw), "gzip"
            assert len(raw) > 64 << 10
        made.append((f"w-{n}", ["app.workers", raw, options]))
    return made


def send(client: RawClient, todo: list[tuple[str, list[Any]]], acked: set[str], until: int) -> None:
    """Send ``todo`` in order, at most IN_FLIGHT unacknowledged, until ``until`` chunks are acknowledged in all."""
    pending: set[str] = set()
    index = 0
    while len(acked) < until:
        while index < len(todo) and len(pending) < IN_FLIGHT:
            client.send(todo[index][1])
            pending.add(todo[index][0])
            index += 1
        reply = client.receive()
        assert reply is not None, f"the daemon closed the connection with {sorted(pending)} unacknowledged"
        pending.discard(reply["ack"])
        acked.add(reply["ack"])


def status(layout: Layout) -> dict[str, Any]:
    snapshot: dict[str, Any] = orjson.loads(layout.http("/status")[1])
    return snapshot


def test_packed_chunks_decoded_by_parse_workers_are_stored_exactly_once_across_kill_9(layout, daemon_factory):
    port = free_port()
    forward_config(layout, port, parse_workers=2)
    made = chunks()
    acked: set[str] = set()
    daemon = wait_listening(new_daemon(layout, daemon_factory).start())
    client = RawClient(port)
    send(client, made, acked, until=12)  # 12 acknowledged, up to 4 more on their way to the buffers
    assert status(layout)["parse_workers"]["blocks_in_workers"] >= 12, "decoded in the workers"
    daemon.kill()
    client.close()

    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        again = RawClient(port)
        # As out_forward does: every chunk without an ack is sent again, under its own id.
        send(again, [c for c in made if c[0] not in acked], acked, until=CHUNKS)
        again.close()
        wait_for(lambda: len(layout.records()) >= CHUNKS * PER_CHUNK - 1, what="every record in the file output")
        assert status(layout)["parse_workers"]["blocks_in_workers"] >= CHUNKS - 12 - IN_FLIGHT
        assert daemon.stop() == 0

    counts = Counter(r["request_id"] for r in layout.records())
    want = {f"w{n}-{i}" for n in range(CHUNKS) for i in range(PER_CHUNK)} - {"w{}-{}".format(*NOT_A_MAP)}
    assert set(counts) == want and max(counts.values()) == 1, counts.most_common(3)
    records = layout.records()
    assert all(r["tag"] == "app.workers" and r["hostname"] for r in records), "enriched as on the loop"
    assert all(r["timestamp"] == T0 + int(r["request_id"].split("-")[1]) for r in records), "the event time"
    (dead,) = layout.dead_letters()
    assert dead["reason"] == "record is not a map" and dead["peer"].startswith("127.0.0.1:")
    assert dead["line"] == '"just a string"' and dead["offset"] == NOT_A_MAP[1]
