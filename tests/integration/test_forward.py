"""The forward source against hand-made frames and the Python fluent-logger: modes, acks, resends, bad input."""

from __future__ import annotations

import base64
import gzip
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import orjson
import pytest

from tests.conftest import new_daemon
from tests.support.daemon import Layout, wait_for
from tests.support.elasticsearch import free_port
from tests.support.forward import RawClient, forward_config, wait_listening

pytestmark = pytest.mark.integration

T0 = 1_795_000_000  # an event time well in the past of the test run, so a time key can't be the ingest time
ARRAY_KEYED: dict[Any, Any] = {(1, 2): "x"}  # packs as a map keyed by an array, which no receiver can decode
TAIL = b"\xc1" + msgpack.packb([T0, {"request_id": "after-the-fault"}])  # 0xc1 is never valid msgpack


@pytest.fixture
def connect() -> Iterator[Callable[[int], RawClient]]:
    """Open raw clients; each is closed when the test ends."""
    made: list[RawClient] = []

    def open_one(port: int) -> RawClient:
        made.append(RawClient(port))
        return made[-1]

    yield open_one
    for client in made:
        client.close()


def event_time(seconds: int, nanos: int) -> msgpack.ExtType:
    """The EventTime extension as a client writes it."""
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanos))


def by_id(layout: Layout) -> dict[str, dict[str, Any]]:
    return {r["request_id"]: r for r in layout.records()}


def packed(entries: list[tuple[object, dict[str, Any]]]) -> bytes:
    return b"".join(msgpack.packb([t, r]) for t, r in entries)


def test_every_event_mode_is_stored_with_its_tag_and_event_time_and_acked_once_committed(
        layout, daemon_factory, connect):
    port = free_port()
    forward_config(layout, port)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        client = connect(port)
        client.send(["app.message", T0, {"request_id": "m1"}, {"chunk": "c-message"}])
        assert client.receive() == {"ack": "c-message"}
        client.send(["app.forward", [[event_time(T0, 250_000_000), {"request_id": "f1"}],
                                     [T0 + 1, {"request_id": "f2"}]], {"chunk": "c-forward", "size": 2}])
        assert client.receive() == {"ack": "c-forward"}
        client.send(["app.packed", packed([(event_time(T0, 5), {"request_id": f"p{i}"}) for i in range(3)]),
                     {"chunk": "c-packed", "size": 3}])
        assert client.receive() == {"ack": "c-packed"}
        gz = gzip.compress(packed([(T0, {"request_id": f"z{i}"}) for i in range(3)]))
        client.send(["app.gzip", gz, {"chunk": "c-gzip", "size": 3, "compressed": "gzip"}])
        assert client.receive() == {"ack": "c-gzip"}
        client.send(["app.noack", T0, {"request_id": "n1", "timestamp": "2026-01-02T03:04:05Z"}])
        wait_for(lambda: len(layout.records()) == 10, what="10 records")
        assert daemon.stop() == 0
    records = by_id(layout)
    assert {r: records[r]["tag"] for r in ("m1", "f1", "p0", "z2", "n1")} == {
        "m1": "app.message", "f1": "app.forward", "p0": "app.packed", "z2": "app.gzip", "n1": "app.noack"}
    assert records["m1"]["timestamp"] == T0 and records["f2"]["timestamp"] == T0 + 1
    assert records["f1"]["timestamp"] == pytest.approx(T0 + 0.25)  # EventTime keeps its fraction
    assert records["n1"]["timestamp"] == "2026-01-02T03:04:05Z"  # a record's own time key wins
    assert all("hostname" in r and "ingested_at" in r for r in records.values())  # enriched as tailed ones


def test_a_resent_chunk_is_acked_again_but_stored_once_even_across_kill_9(layout, daemon_factory, connect):
    port = free_port()
    forward_config(layout, port)
    chunk = ["app.resend", [[T0, {"request_id": f"r{i}"}] for i in range(5)], {"chunk": "resend-1"}]
    daemon = wait_listening(new_daemon(layout, daemon_factory).start())
    client = connect(port)
    client.send(chunk)
    assert client.receive() == {"ack": "resend-1"}
    client.send(chunk)  # as if the first ack had been lost
    assert client.receive() == {"ack": "resend-1"}
    daemon.kill()
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        again = connect(port)
        again.send(chunk)
        assert again.receive() == {"ack": "resend-1"}
        again.send(["app.resend", T0, {"request_id": "after"}, {"chunk": "resend-2"}])
        assert again.receive() == {"ack": "resend-2"}
        wait_for(lambda: len(layout.records()) >= 6, what="6 records")
        metrics = layout.http("/metrics")[1].decode()
        assert 'logferry_source_network_resent_chunks_total{source="fluent"} 1.0' in metrics
        assert daemon.stop() == 0
    assert Counter(r["request_id"] for r in layout.records()) == Counter({f"r{i}": 1 for i in range(5)} | {"after": 1})


def test_chunks_acked_before_a_kill_9_are_delivered_after_it_even_with_their_source_gone_from_the_config(
        layout, daemon_factory, connect):
    # A commit of one forward source's chunks moves no position: its journal line is its commit point,
    # and the positions are not rewritten. The next start must find that line, whatever the config says now.
    port = free_port()
    held = {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"),
            "buffer": {"flush_interval": 3600.0, "timekey": 86400, "timekey_wait": 86400.0}}
    forward_config(layout, port, outputs={"debug": held})
    daemon = wait_listening(new_daemon(layout, daemon_factory).start())
    client = connect(port)
    now = int(time.time())  # the chunks' time window: today's, not due for a day
    for n in range(3):
        client.send(["app.point", [[now, {"request_id": f"c{n}-r{i}"}] for i in range(4)], {"chunk": f"point-{n}"}])
        assert client.receive() == {"ack": f"point-{n}"}
    daemon.kill()  # the chunks are staged in the buffer, not delivered (flush_interval: an hour)
    assert layout.records() == [] and not (layout.state / "positions.json").exists()
    layout.write_config()  # a tail → file pipeline: the forward source is no longer configured
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 12, what="the 12 acked records")
        assert daemon.stop() == 0
    assert Counter(r["request_id"] for r in layout.records()) == Counter(
        {f"c{n}-r{i}": 1 for n in range(3) for i in range(4)})


def test_a_damaged_position_store_keeps_the_chunk_ids_committed_so_a_resend_is_not_stored_again(
        layout, daemon_factory, connect):
    port = free_port()
    forward_config(layout, port)
    chunk = ["app.damaged", [[T0, {"request_id": f"d{i}"}] for i in range(3)], {"chunk": "before-the-damage"}]
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        client = connect(port)
        client.send(chunk)
        assert client.receive() == {"ack": "before-the-damage"}
        wait_for(lambda: len(layout.records()) == 3, what="the 3 records delivered")
        assert daemon.stop() == 0
    (layout.state / "positions.json").write_bytes(b'{"version": 1, "commit_')  # set aside at the next start
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        again = connect(port)
        again.send(chunk)  # its ack was lost, say: the client sends it again
        assert again.receive() == {"ack": "before-the-damage"}
        again.send(["app.damaged", T0, {"request_id": "after"}, {"chunk": "after-the-damage"}])
        assert again.receive() == {"ack": "after-the-damage"}
        wait_for(lambda: len(layout.records()) >= 4, what="the record sent after the damage")
        assert daemon.stop() == 0
    assert list(layout.state.glob("positions.json.corrupt-*"))
    assert Counter(r["request_id"] for r in layout.records()) == Counter({"d0": 1, "d1": 1, "d2": 1, "after": 1})
    # The rebuilt store was written at the start, though the commits since moved no position: the next
    # start is not taken for a first one (files read from their end or their head again).
    assert orjson.loads((layout.state / "positions.json").read_bytes())["commit_seq"] >= 1


def test_a_record_that_is_not_a_map_is_dead_lettered_with_the_peer_while_its_neighbours_are_stored(
        layout, daemon_factory, connect):
    port = free_port()
    forward_config(layout, port)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        client = connect(port)
        client.send(["app.mixed", [[T0, {"request_id": "ok1"}], [T0, "just a string"], [T0, {"request_id": "ok2"}]],
                     {"chunk": "mixed"}])
        assert client.receive() == {"ack": "mixed"}
        wait_for(lambda: len(layout.records()) == 2, what="the two maps")
        assert daemon.stop() == 0
    (entry,) = layout.dead_letters()
    peer = client.sock.getsockname()
    assert entry["reason"] == "record is not a map" and entry["peer"] == f"{peer[0]}:{peer[1]}"
    assert entry["line"] == '"just a string"' and entry["source"] == "fluent"


@pytest.mark.parametrize("parse_workers", [0, 2])
def test_packed_chunks_are_stored_once_across_kill_9_and_bad_entries_dead_lettered_with_the_peer(
        layout, daemon_factory, connect, parse_workers):
    """PackedForward chunks of ~120 KB (decoded in the parse workers when there are some, else on the loop):
    a bad entry in a chunk is dead-lettered with its reason and the peer, its neighbours stored and the chunk
    acked; a chunk resent after kill -9 is stored once."""
    port = free_port()
    forward_config(layout, port, parse_workers=parse_workers)
    chunks, per_chunk = 8, 300

    def chunk(n: int) -> list[Any]:
        entries = [msgpack.packb([event_time(T0, i), {"request_id": f"c{n}-{i}", "prompt": "p" * 380}])
                   for i in range(per_chunk)]
        if n == 2:  # whole msgpack, but no [time, record] map: one dead letter each
            entries[10] = msgpack.packb([T0, "just a string"])
            entries[20] = msgpack.packb([T0, ARRAY_KEYED])
            entries[30] = msgpack.packb([T0, {"request_id": "three"}, "extra"])
        if n == 6:  # bytes after the last whole entry: stored up to them, the rest one dead letter
            entries.append(TAIL)
        return [f"app.packed{n}", b"".join(entries), {"chunk": f"packed-{n}", "size": per_chunk}]

    daemon = wait_listening(new_daemon(layout, daemon_factory).start())
    client = connect(port)
    for n in range(5):
        client.send(chunk(n))
        assert client.receive() == {"ack": f"packed-{n}"}
    if parse_workers:
        assert status(layout)["parse_workers"]["blocks_in_workers"] >= 5
    client.send(chunk(5))
    daemon.kill()  # chunk 5 committed or not: the client resends it either way, as out_forward does
    daemon = wait_listening(new_daemon(layout, daemon_factory).start())
    client = connect(port)
    for n in range(5, chunks):
        client.send(chunk(n))
        assert client.receive() == {"ack": f"packed-{n}"}
    bad = {(2, 10), (2, 20), (2, 30)}
    want = {f"c{n}-{i}" for n in range(chunks) for i in range(per_chunk)} - {f"c{n}-{i}" for n, i in bad}
    wait_for(lambda: len(layout.records()) >= len(want), what="every good record")
    assert daemon.stop() == 0
    stored = Counter(r["request_id"] for r in layout.records())
    assert set(stored) == want and max(stored.values()) == 1, stored.most_common(3)
    record = by_id(layout)["c3-7"]
    assert record["timestamp"] == pytest.approx(T0 + 7e-9) and record["tag"] == "app.packed3"
    letters = sorted(layout.dead_letters(), key=lambda e: (e["id"], e["offset"]))
    peer = client.sock.getsockname()
    assert [(e["offset"], e["id"], e["peer"].split(":")[0]) for e in letters] == [
        *((i, f"fluent:packed-2:{i}", peer[0]) for _, i in sorted(bad)), (per_chunk, "fluent:packed-6:300", peer[0])]
    size = len(chunk(6)[1])
    reasons = ["record is not a map", "entry cannot be decoded: ", "an entry must be [time, record], got a list",
               f"bad PackedForward entries: cut short or not msgpack after {size - len(TAIL)} of {size} bytes"]
    assert all(e["reason"].startswith(r) for e, r in zip(letters, reasons, strict=True)), letters
    assert base64.b64decode(letters[-1]["line_base64"]) == TAIL


def status(layout: Layout) -> dict[str, Any]:
    snapshot: dict[str, Any] = orjson.loads(layout.http("/status")[1])
    return snapshot


@pytest.mark.parametrize("bad", ["garbage", "truncated", "oversized", "not-a-message", "gzip-bomb", "array-key",
                                 "chunk-id-not-utf8"])
def test_bad_input_closes_only_its_connection_and_the_daemon_goes_on(layout, daemon_factory, connect, bad):
    port = free_port()
    forward_config(layout, port, source={"message_limit_bytes": 4096, "chunk_limit_bytes": 8192})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        good = connect(port)
        good.send(["app.good", T0, {"request_id": "before"}, {"chunk": "g1"}])
        assert good.receive() == {"ack": "g1"}
        evil = connect(port)
        if bad == "garbage":
            evil.send_bytes(b"\xc1" + b"GET / HTTP/1.1\r\n\r\n")  # 0xc1 is never valid msgpack
        elif bad == "truncated":
            evil.send_bytes(msgpack.packb(["app.cut", T0, {"request_id": "cut", "x": "y" * 100}])[:-20])
            evil.sock.shutdown(socket.SHUT_WR)
        elif bad == "oversized":
            evil.send(["app.big", T0, {"request_id": "big", "x": "y" * 10_000}])
        elif bad == "not-a-message":
            evil.send({"hello": "world"})
        elif bad == "array-key":  # a map keyed by an array: msgpack cannot give it as a dict
            evil.send(["app.key", T0, ARRAY_KEYED])
        elif bad == "chunk-id-not-utf8":  # a str whose bytes are no UTF-8: it once failed every commit
            message = msgpack.packb(["app.id", T0, {"request_id": "bad-id"}, {"chunk": "PLACEHOLDER"}])
            evil.send_bytes(message.replace(b"\xabPLACEHOLDER", b"\xa2\xff\xfe"))
        else:
            evil.send(["app.bomb", gzip.compress(packed([(T0, {"x": "0" * 100_000})])), {"compressed": "gzip"}])
        assert evil.closed_by_server()
        good.send(["app.good", T0, {"request_id": "after"}, {"chunk": "g2"}])
        assert good.receive() == {"ack": "g2"}
        wait_for(lambda: "closing connection from 127.0.0.1:" in daemon.log(), what="the log line")
        wait_for(lambda: len(layout.records()) == 2, what="the good records")
        metrics = layout.http("/metrics")[1].decode()
        assert 'logferry_source_network_bad_input_total{source="fluent"} 1.0' in metrics
        assert daemon.stop() == 0
    assert sorted(r["request_id"] for r in layout.records()) == ["after", "before"]


def test_an_idle_connection_is_closed_after_keepalive_timeout_and_others_go_on(layout, daemon_factory, connect):
    port = free_port()
    forward_config(layout, port, source={"keepalive_timeout": 1.0})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        idle = connect(port)
        idle.send(["app.idle", T0, {"request_id": "before-idle"}, {"chunk": "i1"}])
        assert idle.receive() == {"ack": "i1"}
        assert idle.closed_by_server()  # nothing more sent: the server ends it (the client waits up to 10 s)
        wait_for(lambda: "idle for 1s" in daemon.log(), what="the log line")
        fresh = connect(port)
        fresh.send(["app.idle", T0, {"request_id": "after-idle"}, {"chunk": "i2"}])
        assert fresh.receive() == {"ack": "i2"}
        # Acked is committed to the buffer; the file output delivers it at its next flush (a stop does not).
        wait_for(lambda: len(layout.records()) >= 2, what="both records in the file output")
        assert daemon.stop() == 0
    assert sorted(r["request_id"] for r in layout.records()) == ["after-idle", "before-idle"]


def test_python_fluent_logger_sender_and_logging_handler_fire_and_forget(layout, daemon_factory, connect):
    from fluent import handler, sender

    port = free_port()
    forward_config(layout, port)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        logger = sender.FluentSender("svc", host="127.0.0.1", port=port, nanosecond_precision=True)
        for n in range(50):
            assert logger.emit("events", {"request_id": f"py-{n}", "n": n}), logger.last_error
        logger.close()
        log_handler = handler.FluentHandler("svc.logs", host="127.0.0.1", port=port)
        log_handler.setFormatter(handler.FluentRecordFormatter({"request_id": "%(message)s", "level": "%(levelname)s"}))
        pylog = logging.getLogger("forward-test")
        pylog.addHandler(log_handler)
        pylog.warning("py-log-1")
        log_handler.close()
        pylog.removeHandler(log_handler)
        wait_for(lambda: len(layout.records()) == 51, what="51 records")
        assert daemon.stop() == 0
    records = by_id(layout)
    assert records["py-7"]["tag"] == "svc.events" and records["py-7"]["n"] == 7
    assert isinstance(records["py-7"]["timestamp"], float)  # nanosecond_precision: EventTime
    assert records["py-log-1"]["tag"] == "svc.logs" and records["py-log-1"]["level"] == "WARNING"


def test_wrong_shared_key_is_refused_with_a_clear_log_line_and_the_right_one_accepted(layout, daemon_factory, connect):
    from pipeline.sources.forward.handshake import client_ping

    port = free_port()
    forward_config(layout, port, source={"shared_key": "s3cret", "self_hostname": "aggregator"})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        wrong = connect(port)
        helo = wrong.receive()
        assert helo[0] == "HELO"
        wrong.send_bytes(client_ping(helo, "intruder", "guess"))
        pong = wrong.receive()
        assert pong[0] == "PONG" and pong[1] is False
        assert wrong.closed_by_server()
        wait_for(lambda: "handshake from 127.0.0.1:" in daemon.log(), what="the refusal")
        assert "wrong shared_key from client 'intruder'" in daemon.log()
        right = connect(port)
        right.send_bytes(client_ping(right.receive(), "friend", "s3cret"))
        pong = right.receive()
        assert pong[:4] == ["PONG", True, "", "aggregator"]
        right.send(["app.auth", T0, {"request_id": "authed"}, {"chunk": "a1"}])
        assert right.receive() == {"ack": "a1"}
        eager = connect(port)  # sends its first message with the PING, without waiting for the PONG
        eager.send_bytes(client_ping(eager.receive(), "eager", "s3cret")
                         + msgpack.packb(["app.auth", T0, {"request_id": "eager"}, {"chunk": "e1"}]))
        assert eager.receive()[:2] == ["PONG", True]
        assert eager.receive() == {"ack": "e1"}
        metrics = layout.http("/metrics")[1].decode()
        assert 'logferry_source_network_refused_handshakes_total{source="fluent"} 1.0' in metrics
        wait_for(lambda: len(layout.records()) >= 2, what="the authenticated records in the file output")
        assert daemon.stop() == 0
    assert sorted(r["request_id"] for r in layout.records()) == ["authed", "eager"]


def test_udp_heartbeat_is_answered_and_status_shows_the_listener(layout, daemon_factory, connect):
    port = free_port()
    forward_config(layout, port)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"\0", ("127.0.0.1", port))
            assert udp.recv(16) == b"\0"
        status = orjson.loads(layout.http("/status")[1])
        assert status["sources"]["fluent"]["network"]["listen"] == f"127.0.0.1:{port}"
        assert daemon.stop() == 0


def test_tls_with_a_shared_key_accepts_a_verifying_client(layout, daemon_factory, connect):
    import ssl

    from pipeline.sources.forward.handshake import client_ping
    from tests.support.elasticsearch import write_certificates

    certs = layout.root / "certs"
    write_certificates(certs)
    port = free_port()
    forward_config(layout, port, source={"tls_cert": str(certs / "node.crt"), "tls_key": str(certs / "node.key"),
                                         "shared_key": "k"})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        client = connect(port)
        client.sock = context.wrap_socket(client.sock, server_hostname="127.0.0.1")
        client.send_bytes(client_ping(client.receive(), "tls-client", "k"))
        assert client.receive()[1] is True
        client.send(["app.tls", T0, {"request_id": "over-tls"}, {"chunk": "t1"}])
        assert client.receive() == {"ack": "t1"}
        plain = connect(port)  # no TLS: the handshake fails and only that connection ends
        plain.send(["app.tls", T0, {"request_id": "plain"}])
        assert plain.closed_by_server()
        wait_for(lambda: len(layout.records()) == 1, what="the TLS record")
        assert daemon.stop() == 0
    assert [r["request_id"] for r in layout.records()] == ["over-tls"]


def test_a_non_loopback_bind_without_key_or_tls_is_warned_about_by_check(layout):
    import subprocess
    import sys

    from tests.support.daemon import REPO

    config = forward_config(layout, 24224, source={"bind": "0.0.0.0"})  # checked only: nothing listens
    result = subprocess.run([sys.executable, "-m", "pipeline", "check", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "warning: sources.fluent: bind = '0.0.0.0'" in result.stderr and "shared_key" in result.stderr
    forward_config(layout, 24224, source={"bind": "0.0.0.0", "shared_key": "k"})
    result = subprocess.run([sys.executable, "-m", "pipeline", "check", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert "warning" not in result.stderr


def test_a_full_buffer_stops_acks_and_reading_and_nothing_is_dropped(layout, daemon_factory, connect):
    # The only output cannot deliver (its directory is a file) and its buffer is tiny: commits stop,
    # so do acks, and once the pipeline's queues are full the source stops reading. After a restart
    # with a reachable output the unacknowledged chunks are resent (same ids): every record once.
    port = free_port()
    outputs: dict[str, dict[str, Any]] = {
        "debug": {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"), "match": ["nothing"]},
               "stuck": {"type": "file", "path": str(layout.root / "never" / "x.jsonl"), "match": ["**"],
                         "buffer": {"total_limit_bytes": 65536, "chunk_limit_bytes": 16384, "flush_interval": 0.1,
                                    "retry_wait": 0.1}}}
    (layout.root / "never").write_text("a file where the output wants a directory: every write fails")
    forward_config(layout, port, outputs=outputs)
    chunks: list[list[Any]] = [["app.bp", [[T0, {"request_id": f"bp-{c}-{i}", "pad": "x" * 900}] for i in range(10)],
               {"chunk": f"bp-{c}"}] for c in range(40)]
    daemon = wait_listening(new_daemon(layout, daemon_factory).start())
    client = connect(port)
    client.sock.settimeout(3)
    acked: set[str] = set()
    for chunk in chunks:
        client.send(chunk)
    try:
        while len(acked) < len(chunks):
            acked.add(client.receive()["ack"])
    except TimeoutError:
        pass
    assert 0 < len(acked) < len(chunks), "acks stop while the buffer is full"
    wait_for(lambda: "buffer full output=stuck" in daemon.log(), what="the pause")
    daemon.kill()
    outputs["stuck"]["path"] = str(layout.out / "%Y%m%d-%H.jsonl")
    forward_config(layout, port, outputs=outputs)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        again = connect(port)
        for chunk in chunks:
            again.send(chunk)  # a client resends what it did not see acknowledged; resending all is the worst case
        assert {again.receive()["ack"] for _ in chunks} == {c[2]["chunk"] for c in chunks}
        wait_for(lambda: len(layout.records()) >= 400, timeout=60, what="every record")
        assert daemon.stop() == 0
    counts = Counter(r["request_id"] for r in layout.records())
    assert len(counts) == 400 and max(counts.values()) == 1


def test_a_port_in_use_stops_the_start_with_an_error_naming_the_key(layout):
    import subprocess
    import sys

    from tests.support.daemon import REPO

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = forward_config(layout, taken.getsockname()[1])
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", "-c", str(config)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "sources.fluent.port: cannot listen on 127.0.0.1:" in result.stderr + result.stdout


def nested(depth: int) -> Any:
    value: Any = {"leaf": "x"}
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize("parse_workers", [0, 1])
def test_records_no_json_can_hold_are_dead_lettered_and_their_neighbours_stored_in_every_mode(
        layout, daemon_factory, connect, parse_workers):
    """A value nested 1,000 deep (msgpack allows 1,024; JSON here 255), a msgpack extension other than EventTime
    (Go's fluent-logger sends a time.Time as type 5), an entry that is not a [time, record] pair: each is one dead
    letter, the chunk is acked and its other records stored; the daemon (and its tail source) carries on."""
    port = free_port()
    forward_config(layout, port, parse_workers=parse_workers)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        client = connect(port)
        client.send(["app.message", T0, {"request_id": "deep-m", "v": nested(1000)}, {"chunk": "c-message"}])
        assert client.receive() == {"ack": "c-message"}
        client.send(["app.forward", [[T0, {"request_id": "f0"}], [T0, {"request_id": "deep-f", "v": nested(1000)}],
                                     [T0, {"request_id": "ext-f", "at": msgpack.ExtType(5, b"\x01" * 15)}],
                                     [T0, {"request_id": "pair"}, "extra"], [T0, {"request_id": "f4"}]],
                     {"chunk": "c-forward"}])
        assert client.receive() == {"ack": "c-forward"}
        entries: list[tuple[object, dict[str, Any]]] = [(T0, {"request_id": "p0"}),
                   (T0, {"request_id": "deep-p", "v": nested(1000)}),
                   (T0, {"request_id": "p2"})]
        client.send(["app.packed", packed(entries), {"chunk": "c-packed"}])
        assert client.receive() == {"ack": "c-packed"}
        wait_for(lambda: len(layout.records()) == 4 and len(layout.dead_letters()) == 5, what="4 records, 5 dead")
        assert daemon.stop() == 0
    assert sorted(by_id(layout)) == ["f0", "f4", "p0", "p2"]
    reasons = sorted((e["id"].split(":")[1], e["offset"], e["reason"]) for e in layout.dead_letters())
    assert [(chunk, offset) for chunk, offset, _ in reasons] == [
        ("c-forward", 1), ("c-forward", 2), ("c-forward", 3), ("c-message", 0), ("c-packed", 1)]
    assert "ExtType" in reasons[1][2]
    assert reasons[2][2] == "an entry must be [time, record], got a list of 3 items"


def test_records_whose_tag_no_output_matches_are_counted_and_named_in_the_log(layout, daemon_factory, connect):
    """A mistyped tag is acked (no client may resend it for ever) but never silently: the log names the tag once,
    status and /metrics count the records."""
    port = free_port()
    forward_config(layout, port, outputs={"debug": {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"),
                                                    "match": ["app.**"], "buffer": {"flush_interval": 0.2}}})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        client = connect(port)
        for n in range(2):
            client.send(["ap.typo", [[T0, {"request_id": f"lost-{n}"}], [T0, {"request_id": f"lost-{n}b"}]],
                         {"chunk": f"typo-{n}"}])
            assert client.receive() == {"ack": f"typo-{n}"}
        client.send(["app.ok", T0, {"request_id": "kept"}, {"chunk": "ok"}])
        assert client.receive() == {"ack": "ok"}
        wait_for(lambda: len(layout.records()) == 1, what="the routed record")
        assert status(layout)["sources"]["fluent"]["unrouted_records"] == 4
        assert 'logferry_source_unrouted_records_total{source="fluent"} 4.0' in layout.http("/metrics")[1].decode()
        assert daemon.stop() == 0
    assert daemon.log().count("records tagged 'ap.typo' match no output's match patterns") == 1


def test_a_client_that_closes_its_side_after_sending_still_gets_its_ack(layout, daemon_factory, connect):
    """Fluentd acks before it handles the end of stream: a client sending a chunk, then shutdown(SHUT_WR), reads
    its ack (it never came: the connection was closed before the commit)."""
    port = free_port()
    forward_config(layout, port)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_listening(daemon)
        client = connect(port)
        client.send(["app.half", T0, {"request_id": "half"}, {"chunk": "h1"}])
        client.sock.shutdown(socket.SHUT_WR)
        assert client.receive() == {"ack": "h1"}
        assert client.receive() is None, "then the server closes"
        wait_for(lambda: len(layout.records()) == 1, what="the record")
        assert daemon.stop() == 0
