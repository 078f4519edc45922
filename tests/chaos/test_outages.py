"""Destinations failing under a running daemon: slow, refusing (429), down, all down at once, overflowing;
and event times far from now.

Every test drives the real daemon against real servers (a throw-away Elasticsearch, moto_server for
S3) and checks what arrived against the writer's ledger of request_ids.

How each outage is made:

* Elasticsearch *slow*: SIGSTOP for longer than the output's ``request_timeout`` (2 s), then SIGCONT:
  requests time out, are retried, and the ones sent while frozen are served late (answered 409 when
  sent again: deterministic ids with ``op_type = "create"``).
* Elasticsearch *down*: the JVM stopped and started again on the same port and data; or, where it
  never comes back, a port nothing listens on.
* Elasticsearch *429*: a server whose write thread pool is one thread with a queue of one, loaded
  by concurrent bulk requests from the test; both whole requests and single documents are refused
  with ``es_rejected_execution_exception``. (``indexing_pressure.memory.limit: 1kb`` refuses every
  bulk request with a 429 too, but it is a static setting: the pressure could not go away.)
* S3 *down*: moto_server stopped (connections refused) and started again on the same port; moto
  keeps its data in memory only, so the bucket is recreated and only what was written after counts.
* S3 *slow*, and S3 *down but keeping its data* in the combined test: SIGSTOP/SIGCONT.
* The file output *down*: its directory is a file (the write fails with ENOTDIR).

The module starts its own Elasticsearch (stopped and frozen here, so never a shared one) and its
own moto_server. Generated records carry event times of 2026-11-18, whose windows are long closed,
so their chunks are due at once; tests about flush timing write records stamped with the current
time (``live_writer``), as in production.
"""

from __future__ import annotations

import calendar
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import generator
from pipeline.buffer import frame
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, Ledger, render_toml, wait_for
from tests.support.elasticsearch import (
    DEFAULT_VERSION,
    ElasticsearchServer,
    all_documents,
    count_documents,
    external_url,
    free_port,
    request,
)
from tests.support.s3server import CREDENTIALS, S3Server, all_records, list_keys
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration

KiB = 1024
DAEMON_ENV = {**CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
              "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
REQUEST_TIMEOUT = 2.0
#: Quick flushes, quick retries, and never give a chunk up (an outage here is always temporary).
RETRY = {"flush_interval": 0.2, "retry_wait": 0.2, "retry_max_interval": 1.0, "retry_limit": 100_000}
NDJSON = {"Content-Type": "application/x-ndjson"}


# -- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def es() -> Iterator[ElasticsearchServer]:
    """This module's own Elasticsearch: its tests stop and freeze it."""
    if external_url():
        pytest.skip("outage tests need a throw-away Elasticsearch to stop and freeze (LOGFERRY_TEST_ES_URL is set)")
    with ElasticsearchServer(DEFAULT_VERSION) as server:
        yield server


@pytest.fixture
def busy_es() -> Iterator[ElasticsearchServer]:
    """An Elasticsearch with one write thread and a queue of one: concurrent bulks are refused with 429."""
    if external_url():
        pytest.skip("needs a throw-away Elasticsearch with a tiny write thread pool (LOGFERRY_TEST_ES_URL is set)")
    settings = {"thread_pool.write.size": 1, "thread_pool.write.queue_size": 1}
    with ElasticsearchServer(DEFAULT_VERSION, settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket named after the test."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{time.monotonic_ns() % 10**6}"
    s3.client().create_bucket(Bucket=name)
    return name


# -- configuration ------------------------------------------------------------------------------


def write_config(layout: Layout, outputs: dict[str, dict[str, Any]], shutdown_timeout: float = 10.0,
                 **source: Any) -> None:
    """One tail source over ``layout.logs`` routed to every output in ``outputs``."""
    doc: dict[str, Any] = {
        "state_dir": layout.state, "shutdown_timeout": shutdown_timeout, "health": {"listen": "127.0.0.1:0"},
        "enrich": {"tag_key": "tag"},
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.5, **source}},
        "outputs": outputs,
    }
    layout.config.write_text(render_toml(doc))


def es_output(url: str, index: str, buffer: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "elasticsearch", "hosts": [url], "index": index, "request_timeout": REQUEST_TIMEOUT,
            **extra, "buffer": {**RETRY, **(buffer or {})}}


def s3_output(url: str, bucket: str, buffer: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    # One attempt per request and short timeouts: the buffer does the retrying.
    return {"type": "s3", "bucket": bucket, "endpoint_url": url, "addressing_style": "path",
            "path": "interactions/%Y/%m/%d/", "connect_timeout": 1.0, "read_timeout": 1.0,
            "request_timeout": REQUEST_TIMEOUT, "max_attempts": 1, **extra, "buffer": {**RETRY, **(buffer or {})}}


def file_output(path: Path, buffer: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "file", "path": str(path / "%Y%m%d-%H.jsonl"), "buffer": {**RETRY, **(buffer or {})}}


# -- what arrived -------------------------------------------------------------------------------


def request_ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def s3_count(s3: S3Server, bucket: str) -> int:
    return len(all_records(s3.client(), bucket))


def since(daemon: Daemon, mark: int) -> str:
    """The daemon's log from character ``mark`` on."""
    return daemon.log()[mark:]


def hold(started: float, seconds: float) -> None:
    """Keep an outage going until ``seconds`` after ``started`` (the chosen length of the fault)."""
    time.sleep(max(0.0, started + seconds - time.monotonic()))


# -- (1) Elasticsearch slower than the request timeout -----------------------------------------


def test_elasticsearch_answering_after_the_request_timeout_loses_and_duplicates_nothing(layout, daemon_factory, es):
    write_config(layout, {"search": es_output(es.url, "slow-%Y.%m.%d", bulk_max_docs=100,
                                              buffer={"chunk_limit_bytes": 64 * KiB})})
    total = 3000
    writer = AgentWriter(layout.logs / "agent.log", total, per_batch=10, pause=0.01, max_chars=1000)
    daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
    writer.start()
    wait_for(lambda: count_documents(es.url, "slow-*") >= 300, what="documents before the freeze")
    mark = len(daemon.log())
    es.freeze()
    try:
        frozen_at = time.monotonic()
        wait_for(lambda: "ConnectionTimeout" in since(daemon, mark), timeout=20, what="a bulk request timing out")
        hold(frozen_at, 3 * REQUEST_TIMEOUT)  # several timeouts and retries while writing goes on
    finally:
        es.thaw()
    writer.join(60)
    assert writer.error is None and writer.written == total
    wait_for(lambda: count_documents(es.url, "slow-*") >= total, timeout=60, interval=0.25,
             what=f"{total} documents after the thaw; daemon log:\n{daemon.log()[-3000:]}")
    assert daemon.stop() == 0
    Ledger.compare(request_ids(total), all_documents(es.url, "slow-*")).assert_exact()
    assert re.search(r"delivery failed output=search .*ConnectionTimeout", daemon.log())
    assert not (layout.state / "buffer" / "search" / "dead").exists()


# -- (2) Elasticsearch refusing with 429 --------------------------------------------------------


class BulkLoad:
    """Threads sending bulk requests to another index as fast as they can: the pressure behind the 429s."""

    def __init__(self, url: str, threads: int = 6) -> None:
        doc = orjson.dumps({"load": "x" * 300}).decode()
        self.body = "".join(f'{{"index":{{"_index":"load"}}}}\n{doc}\n' for _ in range(200))
        self.url, self.stopped = url, threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.statuses: dict[int, int] = {}

    def _run(self) -> None:
        while not self.stopped.is_set():
            status, _ = request("POST", f"{self.url}/_bulk", self.body, headers=NDJSON)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def __enter__(self) -> BulkLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)


def rejected_writes(url: str) -> int:
    """The node's count of tasks refused by its write thread pool."""
    status, body = request("GET", f"{url}/_nodes/stats/thread_pool?filter_path=nodes.*.thread_pool.write")
    assert status == 200, body
    return sum(int(node["thread_pool"]["write"]["rejected"]) for node in body["nodes"].values())


def test_elasticsearch_refusing_with_429_under_pressure_delivers_everything_once_after(
    layout, daemon_factory, busy_es
):
    url = busy_es.url
    write_config(layout, {"search": es_output(
        url, "busy-%Y.%m.%d", bulk_max_docs=50, bulk_concurrency=2, bulk_item_retries=1, bulk_item_retry_wait=0.05,
        buffer={"chunk_limit_bytes": 64 * KiB, "retry_wait": 0.1, "retry_max_interval": 0.5})})
    total = 2000
    generator.write(str(layout.logs / "agent.log"), total, max_chars=1000)
    with BulkLoad(url) as load:
        daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
        wait_for(lambda: daemon.log().count("HTTP 429 es_rejected_execution_exception") >= 3, timeout=30,
                 what=f"429s in the daemon log:\n{daemon.log()[-3000:]}")
    assert load.statuses.get(429), f"the load itself was never refused: {load.statuses}"
    wait_for(lambda: count_documents(url, "busy-*") >= total, timeout=60, interval=0.25,
             what=f"{total} documents once the pressure is gone; daemon log:\n{daemon.log()[-3000:]}")
    assert daemon.stop() == 0
    Ledger.compare(request_ids(total), all_documents(url, "busy-*")).assert_exact()
    assert rejected_writes(url) > 0
    log = daemon.log()
    whole = re.search(r"delivery failed output=search .*Elasticsearch at \S+: HTTP 429 es_rejected_execution", log)
    items = re.search(r"documents still refused after 2 attempts, last: HTTP 429 es_rejected_execution", log)
    assert whole or items, log[-3000:]
    assert not (layout.state / "buffer" / "search" / "dead").exists() and layout.dead_letters() == []


# -- (3) S3 down, S3 slow -----------------------------------------------------------------------


def test_s3_refusing_connections_mid_stream_then_restarted_on_the_same_port(layout, daemon_factory, s3, bucket):
    write_config(layout, {"archive": s3_output(s3.url, bucket, buffer={"chunk_limit_bytes": 64 * KiB})})
    log = layout.logs / "agent.log"
    generator.write(str(log), 500, max_chars=1000)
    with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
        wait_for(lambda: s3_count(s3, bucket) >= 500 and not layout.buffered_chunks("archive"), interval=0.2,
                 what="the first 500 records delivered and acknowledged")
        Ledger.compare(request_ids(500), all_records(s3.client(), bucket)).assert_exact()
        mark = len(daemon.log())
        s3.stop()  # from here on: connection refused; moto forgets every object
        writer = AgentWriter(log, 1500, start=500, per_batch=10, pause=0.005, max_chars=1000)
        writer.start()
        wait_for(lambda: since(daemon, mark).count("EndpointConnectionError") >= 3, timeout=30,
                 what="refused uploads")
        writer.join(60)
        assert writer.error is None
        s3.start()
        s3.client().create_bucket(Bucket=bucket)
        wait_for(lambda: s3_count(s3, bucket) >= 1500, interval=0.2, timeout=60,
                 what=f"1500 records after the restart; daemon log:\n{daemon.log()[-3000:]}")
        assert daemon.stop() == 0
    Ledger.compare(request_ids(1500, start=500), all_records(s3.client(), bucket)).assert_exact()


def test_s3_answering_after_the_request_timeout_loses_and_duplicates_nothing(layout, daemon_factory, s3, bucket):
    write_config(layout, {"archive": s3_output(s3.url, bucket, buffer={"chunk_limit_bytes": 64 * KiB, "workers": 2})})
    total = 3000
    writer = AgentWriter(layout.logs / "agent.log", total, per_batch=10, pause=0.01, max_chars=1000)
    daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
    writer.start()
    wait_for(lambda: list_keys(s3.client(), bucket), what="first objects")
    mark = len(daemon.log())
    s3.freeze()
    try:
        frozen_at = time.monotonic()
        wait_for(lambda: "TimeoutError" in since(daemon, mark), timeout=20, what="an upload timing out")
        hold(frozen_at, 3 * REQUEST_TIMEOUT)
    finally:
        s3.thaw()
    writer.join(60)
    assert writer.error is None
    wait_for(lambda: s3_count(s3, bucket) >= total, interval=0.25, timeout=60,
             what=f"{total} records after the thaw; daemon log:\n{daemon.log()[-3000:]}")
    assert daemon.stop() == 0
    Ledger.compare(request_ids(total), all_records(s3.client(), bucket)).assert_exact()


# -- (4) both destinations down until their buffers are full: the sources pause --------------

SMALL = {"chunk_limit_bytes": 32 * KiB, "total_limit_bytes": 256 * KiB, "overflow_action": "block"}
READ_BYTES = 16 * KiB


def live_writer(path: Path, count: int, start: int = 0, **pace: Any) -> AgentWriter:
    """A writer of records stamped with the current time (time windows still open, as in production)."""
    writer = AgentWriter(path, count, start=start, max_chars=1000, **pace)
    writer.lines = list(generator.lines(count, start=start, max_chars=1000, t0=time.time()))
    return writer


def lines_before(path: Path, end: int) -> int:
    """How many whole lines ``path`` holds before byte ``end``."""
    with path.open("rb") as handle:
        return handle.read(end).count(b"\n")


def test_both_destinations_down_pause_the_source_and_everything_arrives_once_after(
    layout, daemon_factory, es, s3, bucket
):
    write_config(layout, {
        "search": es_output(es.url, "both-%Y.%m.%d", bulk_max_docs=200, buffer=SMALL),
        "archive": s3_output(s3.url, bucket, buffer=SMALL),
        "debug": file_output(layout.out),
    }, read_bytes=READ_BYTES)
    log = layout.logs / "agent.log"
    first, total = 100, 2000  # ~0.2 MB before the outage, ~3.6 MB during it: 14 times the buffers' limit
    generator.write(str(log), first, max_chars=1000)
    daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
    wait_for(lambda: count_documents(es.url, "both-*") >= first and s3_count(s3, bucket) >= first
             and len(layout.records()) >= first, interval=0.2, what="the first records in all three outputs")
    es.stop_process()  # connections refused
    s3.freeze()  # connections accepted, nothing answered (moto keeps its objects)
    try:
        mark = len(daemon.log())
        writer = live_writer(log, total - first, start=first, per_batch=10, pause=0.005)
        writer.start()
        wait_for(lambda: "sources paused" in since(daemon, mark), timeout=30, what="the sources to pause")
        assert re.search(r"buffer full output=(search|archive) bytes=\d+: sources paused", since(daemon, mark))
        writer.join(60)
        assert writer.error is None
        paused_at = layout.saved_offset(log)
        hold(time.monotonic(), 2.0)  # the destinations stay down: nothing more may be read meanwhile
        assert layout.saved_offset(log) == paused_at < log.stat().st_size, "the source kept reading while paused"
        assert lines_before(log, paused_at) < total, "everything was read: the buffers never filled"
        for output in ("search", "archive"):
            # The limit is checked before each commit: it is exceeded by one commit (9 reads) at most.
            on_disk = sum(p.stat().st_size for p in layout.buffered_chunks(output))
            assert 256 * KiB <= on_disk <= 256 * KiB + 9 * READ_BYTES * 1.25, (output, on_disk)
    finally:
        s3.thaw()
        es.start_process()
    wait_for(lambda: "sources resumed" in since(daemon, mark), timeout=60, what="the sources to resume")
    wait_for(lambda: count_documents(es.url, "both-*") >= total and s3_count(s3, bucket) >= total
             and len(layout.records()) >= total, timeout=90, interval=0.25,
             what=f"{total} records in all three outputs; daemon log:\n{daemon.log()[-3000:]}")
    assert daemon.stop() == 0
    expected = request_ids(total)
    Ledger.compare(expected, all_documents(es.url, "both-*")).assert_exact()
    Ledger.compare(expected, all_records(s3.client(), bucket)).assert_exact()
    Ledger.compare(expected, layout.records()).assert_exact()
    assert "dropped" not in daemon.log()


def test_file_output_gets_every_record_read_while_elasticsearch_is_down_and_its_buffer_fills(
    layout, daemon_factory
):
    # Failure isolation: Elasticsearch refuses connections from the start; the file output on the same
    # source must go on delivering until Elasticsearch's buffer is full and the source pauses, and then
    # hold every record read before the pause (within its flush_interval), not only some of them.
    down = f"http://127.0.0.1:{free_port()}"
    write_config(layout, {
        "search": es_output(down, "isolated-%Y.%m.%d", buffer=SMALL),
        "debug": file_output(layout.out, {"flush_interval": 0.5}),
    }, read_bytes=READ_BYTES)
    log = layout.logs / "agent.log"
    total = 400  # ~0.75 MB at ~45 records/s: Elasticsearch's 256 KiB fill in about 3 s
    writer = live_writer(log, total, per_batch=1, pause=0.02)
    daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
    writer.start()
    wait_for(lambda: "sources paused" in daemon.log(), timeout=30, what="Elasticsearch's buffer to fill")
    assert layout.records(), "the file output delivered nothing while Elasticsearch was down"
    paused_at = layout.saved_offset(log)
    read = lines_before(log, paused_at)
    wait_for(lambda: len(layout.records()) >= read, timeout=5,
             what=f"the file output to deliver the {read} records read before the pause "
                  f"(has {len(layout.records())}; its buffer holds {layout.buffered_chunks('debug')})")
    Ledger.compare(request_ids(read), layout.records()).assert_exact()
    writer.join(60)
    daemon.kill()


def test_sigterm_while_the_sources_are_paused_stops_promptly_and_loses_nothing(layout, daemon_factory, es):
    def outputs(url: str) -> dict[str, dict[str, Any]]:
        return {"search": es_output(url, "paused-%Y.%m.%d", buffer=SMALL), "debug": file_output(layout.out)}

    write_config(layout, outputs(f"http://127.0.0.1:{free_port()}"), shutdown_timeout=5.0, read_bytes=READ_BYTES)
    total = 600
    generator.write(str(layout.logs / "agent.log"), total, max_chars=1000)  # ~1.1 MB: 4 times the buffer limit
    daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
    wait_for(lambda: "sources paused" in daemon.log(), timeout=30, what="Elasticsearch's buffer to fill")
    asked = time.monotonic()
    assert daemon.stop() == 0
    took = time.monotonic() - asked
    first_run = daemon.log()
    # Elasticsearch is reachable at the next start: what was read is delivered once, the rest read again.
    write_config(layout, outputs(es.url), read_bytes=READ_BYTES)
    with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
        wait_for(lambda: count_documents(es.url, "paused-*") >= total and len(layout.records()) >= total, timeout=60,
                 interval=0.25, what=f"{total} records after the restart")
        assert daemon.stop() == 0
    Ledger.compare(request_ids(total), all_documents(es.url, "paused-*")).assert_exact()
    Ledger.compare(request_ids(total), layout.records()).assert_exact()
    # Nothing can be committed to a full buffer: a stop should not wait for room until shutdown_timeout.
    hung = "stop did not finish" in first_run
    assert not hung and took < 3.0, f"SIGTERM while paused took {took:.1f}s (cut short by shutdown_timeout: {hung})"


# -- (5) drop_oldest_chunk: what is dropped is logged, the rest arrives once -------------------


class ChunkKeeper(threading.Thread):
    """Hard-links every chunk file of a buffer directory as it appears, so a dropped chunk can be read."""

    def __init__(self, directory: Path, into: Path) -> None:
        super().__init__(daemon=True)
        self.directory, self.into = directory, into
        self.into.mkdir(parents=True, exist_ok=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.002):
            for path in self.directory.glob("*.*.*"):
                target = self.into / path.name.split(".")[1]
                if not target.exists():
                    try:
                        target.hardlink_to(path)  # same inode: later appends show, a delete leaves it
                    except FileNotFoundError:
                        pass  # renamed (staged → queued) or deleted meanwhile: seen again next round

    def request_ids(self, chunk_id: str) -> list[str]:
        """The request_ids in a kept chunk's data frames."""
        ids: list[str] = []
        with (self.into / chunk_id).open("rb") as handle:
            while (item := frame.decode_from(handle)) is not None:
                if item.kind == frame.KIND_DATA:
                    ids += [orjson.loads(line)["request_id"] for line in item.payload.splitlines()]
        return ids

    def __enter__(self) -> ChunkKeeper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.join(10)


DROP = re.compile(r"buffer full: dropped oldest chunk output=debug chunk=(\d+)\.([0-9a-f]+) timekey=(\d+) "
                  r"records=(\d+) bytes=(\d+)")


def test_drop_oldest_chunk_logs_every_drop_and_delivers_exactly_the_rest_once(layout, daemon_factory):
    blocker = layout.out / "blocked"
    blocker.write_text("the output is down until this file is gone")
    write_config(layout, {"debug": {
        "type": "file", "path": str(blocker / "%Y%m%d-%H.jsonl"),
        "buffer": {**RETRY, "chunk_limit_bytes": 32 * KiB, "total_limit_bytes": 128 * KiB,
                   "overflow_action": "drop_oldest_chunk", "retry_max_interval": 0.3},
    }}, read_bytes=READ_BYTES)
    log = layout.logs / "agent.log"
    total = 1500  # ~2.8 MB through a 128 KiB buffer
    writer = AgentWriter(log, total, per_batch=5, pause=0.01, max_chars=1000)
    with ChunkKeeper(layout.state / "buffer" / "debug", layout.root / "kept") as keeper:
        daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
        writer.start()
        writer.join(60)
        assert writer.error is None
        wait_for(lambda: layout.saved_offset(log) == log.stat().st_size, timeout=30, what="everything read")
        drops = DROP.findall(daemon.log())
        assert len(drops) >= 10, daemon.log()[-3000:]
        blocker.unlink()  # the output comes back
        lost = sum(int(d[3]) for d in drops)
        wait_for(lambda: not layout.buffered_chunks("debug") and len(layout.records()) >= total - lost, timeout=30,
                 what=f"{total - lost} records delivered")
        assert daemon.stop() == 0
    assert len(DROP.findall(daemon.log())) == len(drops), "dropped after the output came back"
    dropped: set[str] = set()
    for timekey, chunk_id, logged_timekey, records, size in drops:
        assert (keeper.into / chunk_id).exists(), f"chunk {chunk_id} dropped before the test could keep it"
        ids = keeper.request_ids(chunk_id)
        assert timekey == logged_timekey and len(ids) == int(records) > 0
        assert (keeper.into / chunk_id).stat().st_size == int(size)
        dropped.update(ids)
    ledger = Ledger.compare(request_ids(total), layout.records())
    assert ledger.lost == dropped, f"lost {len(ledger.lost)}, dropped {len(dropped)}"
    assert not ledger.duplicated and not ledger.unexpected


# -- (6) event times far in the past and future; a lazy window that never closes by the clock ---


def stamp(when: float) -> str:
    return time.strftime("%Y%m%d-%H", time.gmtime(when))


def test_event_times_far_from_now_land_in_their_own_windows_and_no_chunk_stays_staged(layout, daemon_factory):
    write_config(layout, {"debug": file_output(layout.out, {"flush_mode": "lazy", "timekey": 2,
                                                            "timekey_wait": 1.0})})
    past, future = 631_152_000.0, 4_115_534_400.0  # 1990-01-01T00:00:00Z, 2100-06-01T12:00:00Z
    now = time.time()
    rows: list[dict[str, Any]] = []
    for n in range(100):
        rows.append({"request_id": f"past-{n}", "timestamp": past + n * 61.0, "input": "x" * 200})
        rows.append({"request_id": f"future-{n}", "timestamp": future + n * 61.0, "input": "y" * 200})
        rows.append({"request_id": f"past-iso-{n}", "input": "z",
                     "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(past + 86_400 + n * 97))})
        rows.append({"request_id": f"future-iso-{n}", "input": "w",
                     "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(future + 86_400 + n * 97))})
        rows.append({"request_id": f"now-{n}", "timestamp": now + n * 0.01, "input": "v"})
    log = layout.logs / "agent.log"
    with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
        log.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        written = time.monotonic()

        def arrived(prefix: str) -> int:
            return sum(r["request_id"].startswith(prefix) for r in layout.records())

        wait_for(lambda: arrived("past-") == 200, timeout=10, what="the 1990 records (their windows closed long ago)")
        wait_for(lambda: arrived("future-") == 200, timeout=20,
                 what=f"the 2100 records (flushed by the monotonic backstop); log:\n{daemon.log()[-2000:]}")
        future_after = time.monotonic() - written
        wait_for(lambda: len(layout.records()) >= len(rows), timeout=10, what="every record")
        # A delivered chunk is deleted just after its records are written; a stranded one never is.
        wait_for(lambda: not layout.buffered_chunks("debug"), timeout=5, what="no chunk left buffered")
        assert daemon.stop() == 0
    # A lazy chunk is not flushed before its window (2 s) and wait (1 s) have passed on the monotonic clock.
    assert future_after >= 2.9, f"the 2100 records arrived after {future_after:.1f}s: flushed before the backstop"
    Ledger.compare([r["request_id"] for r in rows], layout.records()).assert_exact()
    by_file: dict[str, set[str]] = {}
    for path in sorted(layout.out.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            ts = record["timestamp"]
            when = ts if isinstance(ts, float) else calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))
            assert path.name == f"{stamp(when)}.jsonl", (path.name, record["request_id"], ts)
            by_file.setdefault(path.name[:4], set()).add(record["request_id"].split("-")[0])
    assert by_file["1990"] == {"past"} and by_file["2100"] == {"future"} and set(by_file) >= {"1990", "2100"}
