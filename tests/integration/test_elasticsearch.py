"""Tail → buffer → Elasticsearch on the real daemon and a real cluster: every record indexed exactly once."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import generator
from pipeline.client import InteractionLogger
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, render_toml, wait_for
from tests.support.elasticsearch import ElasticsearchServer, free_port, request
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration

DAY = "2026.11.18"  # generator.T0 (1_795_000_000) is 2026-11-18T11:06:40Z
NDJSON = {"Content-Type": "application/x-ndjson"}


class Cluster:
    """A few HTTP calls against the test cluster (urllib: independent of the code under test)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        status, answer = request(method, self.url + path, body)
        assert status in ok, f"{method} {path}: HTTP {status} {answer}"
        return answer

    def count(self, pattern: str) -> int:
        """Documents in the indices matching ``pattern``, after a refresh (0 while a new index starts)."""
        self.call("POST", f"/{pattern}/_refresh", ok=(200, 503))
        answer = self.call("GET", f"/{pattern}/_count", ok=(200, 503))
        return int(answer["count"]) if "count" in answer else 0

    def ids(self, pattern: str) -> list[str]:
        """Every document id in ``pattern`` (up to 10,000)."""
        self.call("POST", f"/{pattern}/_refresh")
        hits = self.call("POST", f"/{pattern}/_search", {"size": 10_000, "_source": False})["hits"]["hits"]
        return [hit["_id"] for hit in hits]

    def source(self, index: str, doc_id: str) -> dict[str, Any]:
        """One document's source."""
        found: dict[str, Any] = self.call("GET", f"/{index}/_doc/{doc_id}")["_source"]
        return found

    def drop(self, prefix: str) -> None:
        """Delete the indices and the template a test made."""
        self.call("DELETE", f"/{prefix}-*", ok=(200, 404))
        self.call("DELETE", f"/_index_template/{prefix}", ok=(200, 404))


@pytest.fixture
def cluster(es_url: str) -> Iterator[Callable[[str], Cluster]]:
    """The cluster, with the index prefixes a test names dropped before and after it."""
    prefixes: list[str] = []
    client = Cluster(es_url)

    def use(prefix: str) -> Cluster:
        prefixes.append(prefix)
        client.drop(prefix)
        return client

    yield use
    for prefix in prefixes:
        client.drop(prefix)


def es_config(layout: Layout, url: str, index: str, output: dict[str, Any] | None = None,
              buffer: dict[str, Any] | None = None) -> Path:
    """tail → elasticsearch over ``layout``, with quick flushes and retries."""
    doc: dict[str, Any] = {
        "state_dir": layout.state, "shutdown_timeout": 10.0,
        "enrich": {"tag_key": "tag"},
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.5}},
        "outputs": {"search": {
            "type": "elasticsearch", "hosts": [url], "index": index, "request_timeout": 10.0, **(output or {}),
            "buffer": {"flush_interval": 0.2, "retry_wait": 0.1, "retry_max_interval": 1.0, **(buffer or {})},
        }},
    }
    layout.config.write_text(render_toml(doc))
    return layout.config


def request_ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def assert_exactly(es: Cluster, pattern: str, expected: list[str]) -> None:
    """The cluster holds exactly the expected ids, each once."""
    assert es.count(pattern) == len(expected)
    found = es.ids(pattern)
    assert len(found) == len(set(found)) == len(expected)
    assert set(found) == set(expected), f"missing {sorted(set(expected) - set(found))[:5]}"


def wait_count(es: Cluster, pattern: str, count: int, daemon: Daemon, timeout: float = 60.0) -> None:
    wait_for(lambda: es.count(pattern) >= count, timeout=timeout, interval=0.25,
             what=f"{count} documents in {pattern}; daemon log:\n{daemon.log()[-3000:]}")


def every_record_once(layout: Layout, daemon_factory: list[Daemon], es: Cluster, url: str, count: int) -> None:
    """Index ``count`` generated records into ai-interactions-%Y.%m.%d and check them."""
    es_config(layout, url, "ai-interactions-%Y.%m.%d")
    generator.write(str(layout.logs / "agent.log"), count, max_chars=3000)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(es, "ai-interactions-*", count, daemon)
        assert daemon.stop() == 0
    assert_exactly(es, "ai-interactions-*", request_ids(count))
    index = f"ai-interactions-{DAY}"
    properties = es.call("GET", f"/{index}/_mapping")[index]["mappings"]["properties"]
    assert properties["timestamp"]["type"] == "date", "the template's mapping, not a dynamic one"
    assert (properties["tokens"]["type"], properties["model"]["type"]) == ("long", "keyword")
    originals = list(generator.records(count, max_chars=3000))
    for record in random.Random(7).sample(originals, 5):
        stored = es.source(index, record["request_id"])
        added = {key: stored.pop(key) for key in ("hostname", "ingested_at", "tag")}
        assert stored == record and added["tag"] == "ai.interactions"
    assert "Elasticsearch 8." in daemon.log() or "Elasticsearch 9." in daemon.log()
    assert "index template ai-interactions installed" in daemon.log()


def test_every_generated_record_is_searchable_exactly_once(layout, daemon_factory, cluster, es_url):
    every_record_once(layout, daemon_factory, cluster("ai-interactions"), es_url, 3000)


EXAMPLE = """
# logferry: tail an AI agent's interaction log, ship it to Elasticsearch and keep a local archive.
state_dir = "{state}"

[enrich]
tag_key = "tag"
fields = {{ environment = "test" }}

[sources.agent]
type = "tail"
paths = ["{logs}/*.log"]
tag = "ai.interactions"

[outputs.search]
type = "elasticsearch"
match = ["ai.**"]
hosts = ["{url}"]
index = "example-interactions-%Y.%m.%d"
username = "logferry"
# the password comes from LOGFERRY_OUTPUTS__SEARCH__PASSWORD (or password_file)
request_timeout = 10.0
bulk_max_docs = 1000

[outputs.search.buffer]
flush_interval = 1.0

[outputs.archive]
type = "file"
path = "{out}/interactions-%Y%m%d.jsonl"

[outputs.archive.buffer]
flush_interval = 1.0
"""


def test_example_config_end_to_end(layout, daemon_factory, cluster, es_url):
    es = cluster("example-interactions")
    layout.config.write_text(EXAMPLE.format(state=layout.state, logs=layout.logs, url=es_url, out=layout.out))
    env = {"LOGFERRY_OUTPUTS__SEARCH__PASSWORD": "not-checked-by-the-test-cluster"}
    with new_daemon(layout, daemon_factory, env) as daemon:
        with InteractionLogger(str(layout.logs / "agent.log")) as agent:
            sent = [agent.log_interaction("What is 2+2?", "4", "gpt-4o-mini", tokens=12, latency_ms=321.5)
                    for _ in range(20)]
        wait_count(es, "example-interactions-*", 1, daemon)
        wait_count(es, "example-interactions-*", 20, daemon)
        wait_for(lambda: len(layout.records()) >= 20, what="the archive")
        assert daemon.stop() == 0
    assert_exactly(es, "example-interactions-*", sent)
    assert {r["request_id"] for r in layout.records()} == set(sent)


def test_documents_refused_for_a_mapping_conflict_are_dead_lettered(layout, daemon_factory, cluster, es_url):
    es = cluster("conflict")
    es.call("PUT", f"/conflict-{DAY}", {"mappings": {"properties": {"tokens": {"type": "integer"}}}})
    es_config(layout, es_url, "conflict-%Y.%m.%d")
    records = list(generator.records(500, max_chars=500))
    bad = {r["request_id"] for n, r in enumerate(records) if n % 50 == 7}
    for record in records:
        if record["request_id"] in bad:
            record["tokens"] = "not-a-number"
    log = layout.logs / "agent.log"
    log.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.dead_letters()) >= len(bad), timeout=60, what="dead letters")
        wait_count(es, "conflict-*", len(records) - len(bad), daemon)
        assert daemon.stop() == 0
    assert_exactly(es, "conflict-*", sorted({r["request_id"] for r in records} - bad))
    dead = layout.dead_letters()
    assert {d["doc_id"] for d in dead} == bad and len(dead) == len(bad) == 10
    raw = log.read_bytes()
    for entry in dead:
        assert entry["output"] == "search" and entry["index"] == f"conflict-{DAY}"
        assert entry["status"] == 400 and entry["error_type"] == "document_parsing_exception"
        assert "[tokens]" in entry["reason"] and "not-a-number" in entry["reason"]
        document = orjson.loads(entry["line"])
        assert document["tokens"] == "not-a-number" and document["request_id"] == entry["doc_id"]
        source_line = raw[entry["offset"] : raw.index(b"\n", entry["offset"])]
        assert orjson.loads(source_line)["request_id"] == entry["doc_id"], "offset points at the source line"
        assert entry["path"] == str(log) and entry["source"] == "agent"
    assert "dead-lettered" in daemon.log()


def test_documents_refused_for_a_while_are_resent_and_progress_is_kept(layout, daemon_factory, cluster, es_url):
    # A write block answers 403 cluster_block_exception per document: not the document's fault, so it is
    # resent. Half the chunk goes to a blocked index: the other half must be indexed once, not resent.
    es = cluster("blocked")
    es.call("PUT", f"/blocked-{DAY}.12", {"settings": {"index.blocks.write": True}})
    es_config(layout, es_url, "blocked-%Y.%m.%d.%H", output={"bulk_item_retries": 1, "bulk_item_retry_wait": 0.1},
              buffer={"timekey": 86400, "retry_max_interval": 0.5})
    records = list(generator.records(200, max_chars=300))
    for n, record in enumerate(records):
        record["timestamp"] = generator.T0 + (3600 if n % 2 else 0) + n  # hour 11 or hour 12, interleaved
    (layout.logs / "agent.log").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: daemon.log().count("documents still refused after 2 attempts") >= 2, timeout=30,
                 what="two failed attempts")
        assert "HTTP 403 cluster_block_exception" in daemon.log()
        assert es.count(f"blocked-{DAY}.11") == 100
        es.call("PUT", f"/blocked-{DAY}.12/_settings", {"index.blocks.write": False})
        wait_count(es, "blocked-*", 200, daemon)
        assert daemon.stop() == 0
    assert_exactly(es, "blocked-*", [r["request_id"] for r in records])
    assert "already indexed" not in daemon.log(), "documents indexed before a retry were sent again"
    assert layout.dead_letters() == []


def test_several_hosts_one_of_them_down(layout, daemon_factory, cluster, es_url):
    es = cluster("hosts")
    password = layout.root / "password"
    password.write_text("secret\n")
    down = f"http://127.0.0.1:{free_port()}"
    es_config(layout, down, "hosts-%Y.%m.%d",
              output={"hosts": [down, es_url], "username": "logferry", "password_file": str(password)})
    generator.write(str(layout.logs / "agent.log"), 500, max_chars=500)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(es, "hosts-*", 500, daemon)
        assert daemon.stop() == 0
    assert_exactly(es, "hosts-*", request_ids(500))


def test_an_elasticsearch_outage_mid_stream_loses_and_duplicates_nothing(
    layout, daemon_factory, cluster, es_server: ElasticsearchServer | None
):
    if es_server is None:
        pytest.skip("needs the session's own Elasticsearch (LOGFERRY_TEST_ES_URL is set)")
    es = cluster("outage")
    es_config(layout, es_server.url, "outage-%Y.%m.%d", output={"bulk_max_docs": 100}, buffer={"retry_limit": 1000})
    total = 3000
    writer = AgentWriter(layout.logs / "agent.log", total, per_batch=20, pause=0.004, max_chars=1000)
    daemon = new_daemon(layout, daemon_factory).start()
    writer.start()
    wait_count(es, "outage-*", 300, daemon)
    with es_server.outage():
        wait_for(lambda: "delivery failed output=search" in daemon.log(), timeout=30, what="a failed delivery")
        assert daemon.stop() == 0
        # Started while the cluster is down: start() only logs, the template waits for the first delivery.
        daemon = new_daemon(layout, daemon_factory).start()
        assert "cannot check Elasticsearch" in daemon.log()
        writer.join(60)
        assert writer.error is None
    wait_count(es, "outage-*", total, daemon, timeout=90)
    assert daemon.stop() == 0
    assert daemon.log().count("index template outage installed") == 2
    assert_exactly(es, "outage-*", request_ids(total))


def test_sigkill_mid_bulk_then_restart_indexes_everything_once(layout, daemon_factory, cluster, es_url):
    es = cluster("crash")
    # Small bulks keep the delivery long enough (against the count's polling) to kill it mid-stream twice.
    es_config(layout, es_url, "crash-%Y.%m.%d", output={"bulk_max_docs": 20, "bulk_concurrency": 2},
              buffer={"chunk_limit_records": 400, "workers": 2})
    total = 10_000
    generator.write(str(layout.logs / "agent.log"), total, max_chars=300)
    for _ in range(2):
        before = es.count("crash-*")
        daemon = new_daemon(layout, daemon_factory).start()
        wait_count(es, "crash-*", before + 300, daemon)
        daemon.kill()
        assert es.count("crash-*") < total, "killed mid-stream"
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(es, "crash-*", total, daemon)
        assert daemon.stop() == 0
    assert_exactly(es, "crash-*", request_ids(total))


def test_too_large_requests_are_split_and_a_lone_oversized_document_is_dead_lettered(
    layout, daemon_factory, es_small_url
):
    es = Cluster(es_small_url)
    es_config(layout, es_small_url, "small-%Y.%m.%d", output={"install_template": False})
    records: list[dict[str, Any]] = [
        {"request_id": f"s{n:03d}", "timestamp": generator.T0 + n, "input": "x" * 60} for n in range(30)
    ]
    records[11]["input"] = "y" * 3000
    (layout.logs / "agent.log").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.dead_letters()) >= 1, timeout=60, what="the oversized document's dead letter")
        wait_count(es, "small-*", 29, daemon)
        assert daemon.stop() == 0
    assert_exactly(es, "small-*", [r["request_id"] for n, r in enumerate(records) if n != 11])
    (entry,) = layout.dead_letters()
    assert (entry["doc_id"], entry["status"], entry["error_type"]) == ("s011", 413, "request_entity_too_large")
    assert "too large (HTTP 413): splitting" in daemon.log()


def test_elasticsearch_9_every_record_once(layout, daemon_factory, es9_url):
    every_record_once(layout, daemon_factory, Cluster(es9_url), es9_url, 1000)


def test_elasticsearch_9_mapping_conflict_is_dead_lettered(layout, daemon_factory, es9_url):
    es = Cluster(es9_url)
    es.call("PUT", f"/conflict9-{DAY}", {"mappings": {"properties": {"tokens": {"type": "integer"}}}})
    es_config(layout, es9_url, "conflict9-%Y.%m.%d")
    records = list(generator.records(100, max_chars=300))
    records[5]["tokens"] = "not-a-number"
    (layout.logs / "agent.log").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.dead_letters()) >= 1, timeout=60, what="the dead letter")
        wait_count(es, "conflict9-*", 99, daemon)
        assert daemon.stop() == 0
    (entry,) = layout.dead_letters()
    assert (entry["doc_id"], entry["status"]) == (records[5]["request_id"], 400)
    assert_exactly(es, "conflict9-*", [r["request_id"] for n, r in enumerate(records) if n != 5])
