"""Tail → buffer → Elasticsearch on the real daemon and a real cluster: every record indexed exactly once."""

from __future__ import annotations

import random
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import REPO, Daemon, Layout, Ledger, render_toml, wait_for
from tests.support.elasticsearch import Cluster, ElasticsearchServer, access_for, dropping_indices, free_port, request
from tests.support.kafka import KafkaBroker, TopicReader
from tests.support.s3server import CREDENTIALS, all_records, list_keys
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration

DAY = "2026.11.18"  # generator.T0 (1_795_000_000) is 2026-11-18T11:06:40Z
NDJSON = {"Content-Type": "application/x-ndjson"}
# The daemon's S3 client: the test credentials, and nothing from the machine's own AWS setup.
S3_ENV = {**CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture
def cluster(es_url: str) -> Iterator[Callable[[str], Cluster]]:
    """The cluster, with the index prefixes a test names dropped before and after it."""
    with dropping_indices(es_url) as use:
        yield use


def es_config(layout: Layout, url: str, index: str, output: dict[str, Any] | None = None,
              buffer: dict[str, Any] | None = None) -> Path:
    """tail → elasticsearch over ``layout``, with quick flushes and retries, and the cluster's credentials and CA
    (a secured ``LOGFERRY_TEST_ES_URL``)."""
    doc: dict[str, Any] = {
        "state_dir": layout.state, "shutdown_timeout": 10.0,
        "health": {"listen": "127.0.0.1:0"},  # a free port: never in the way of another daemon
        "enrich": {"tag_key": "tag"},
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.5}},
        "outputs": {"search": {
            "type": "elasticsearch", "hosts": [url], "index": index, "request_timeout": 10.0,
            **access_for(url).output_options(), **(output or {}),
            "buffer": {"flush_interval": 0.2, "retry_wait": 0.1, "retry_max_interval": 1.0, **(buffer or {})},
        }},
    }
    layout.config.write_text(render_toml(doc))
    return layout.config


def request_ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def assert_exactly(es: Cluster, pattern: str, expected: list[str]) -> None:
    """The cluster holds exactly the expected ids, each once."""
    es.assert_exactly(pattern, expected)


def wait_count(es: Cluster, pattern: str, count: int, daemon: Daemon, timeout: float = 60.0) -> None:
    wait_for(lambda: es.count(pattern) >= count, timeout=timeout, interval=0.25,
             what=f"{count} documents in {pattern}; daemon log:\n{daemon.log()[-3000:]}")


def conflicting_backlog(es: Cluster, layout: Layout, prefix: str, records: list[dict[str, Any]],
                        bad: set[str]) -> Path:
    """A mapping conflict: index ``{prefix}-{DAY}`` maps ``tokens`` as an integer, and agent.log holds
    ``records``, those whose request_id is in ``bad`` with a string there. Returns agent.log."""
    es.call("PUT", f"/{prefix}-{DAY}", {"mappings": {"properties": {"tokens": {"type": "integer"}}}})
    for record in records:
        if record["request_id"] in bad:
            record["tokens"] = "not-a-number"
    log = layout.logs / "agent.log"
    log.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records))
    return log


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


def test_a_data_stream_receives_every_record_once_with_its_timestamp(layout, daemon_factory, cluster, es_url):
    # Data streams live in a module the Maven test distribution does not ship: this runs against a
    # full cluster (LOGFERRY_TEST_ES_URL) and is skipped on the suite's own.
    status, _ = request("GET", f"{es_url}/_data_stream")
    if status != 200:
        pytest.skip(f"this cluster has no data streams (GET /_data_stream: HTTP {status})")
    es = cluster("logs-ai.logferry-test")
    es.call("DELETE", "/_data_stream/logs-ai.logferry-test", ok=(200, 404))
    es_config(layout, es_url, "logs-ai.logferry-test", output={"data_stream": True})
    generator.write(str(layout.logs / "agent.log"), 500, max_chars=500)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(es, "logs-ai.logferry-test", 500, daemon)
        assert daemon.stop() == 0
    assert_exactly(es, "logs-ai.logferry-test", request_ids(500))
    streams = es.call("GET", "/_data_stream/logs-ai.logferry-test")["data_streams"]
    assert [s["name"] for s in streams] == ["logs-ai.logferry-test"]
    es.call("DELETE", "/_data_stream/logs-ai.logferry-test", ok=(200, 404))


def example_for_test(layout: Layout, es_url: str, s3_url: str, kafka_bootstrap: str) -> dict[str, Any]:
    """REPO/config.example.toml as it is, but for what cannot be the same in a test.

    Changed: the state directory, the tailed paths, the forward port and the status endpoint (free
    ports), the cluster (hosts, plus its credentials and CA if ``LOGFERRY_TEST_ES_URL`` is secured), the
    S3 endpoint (the test's moto server, path-style), the Kafka brokers (the test's broker), and the file
    output's directory (its file name pattern is kept). Left out: the indexer's kafka source, which would
    read back what the fleet output writes (the indexer's half runs in test_kafka_source.py).
    """
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    del example["sources"]["bus"]
    example["state_dir"] = str(layout.state)
    example["health"]["listen"] = "127.0.0.1:0"
    example["sources"]["agent"]["paths"] = [str(layout.logs / "*.log")]
    example["sources"]["fluent"]["port"] = 0  # any free port: 24224 may be taken
    outputs = example["outputs"]
    outputs["search"] |= {"hosts": [es_url], **access_for(es_url).output_options()}
    outputs["archive"] |= {"endpoint_url": s3_url, "addressing_style": "path"}
    outputs["debug"]["path"] = str(layout.out / Path(outputs["debug"]["path"]).name)
    outputs["fleet"]["brokers"] = [kafka_bootstrap]
    return example


def test_example_config_end_to_end(layout, daemon_factory, cluster, es_url, s3_server, kafka: KafkaBroker):
    # The seed's check is `GET ai-interactions*/_count` >= 1; here every record must be in each output once.
    es = cluster("ai-interactions")
    example = example_for_test(layout, es_url, s3_server.url, kafka.bootstrap)
    search, archive, fleet = (example["outputs"][name] for name in ("search", "archive", "fleet"))
    kafka.create_topic(fleet["topic"], partitions=2)  # must exist, as in production
    fleet_reader = TopicReader(kafka.bootstrap, fleet["topic"])
    assert search["index"] == "ai-interactions", "the seed's index name (and the check below) changed"
    text = render_toml(example)
    assert tomllib.loads(text) == example, "written back as it was read"
    layout.config.write_text(text)
    s3 = s3_server.client()
    s3.create_bucket(Bucket=archive["bucket"])  # create_bucket = false in the example, as in production
    total = 1000
    generator.write(str(layout.logs / "agent.log"), total, max_chars=1000)  # 2026-11-18: the hour is closed
    expected = request_ids(total)
    with new_daemon(layout, daemon_factory, S3_ENV) as daemon:
        wait_for(lambda: es.count("ai-interactions*") >= 1, timeout=30, what=f"the seed check:\n{daemon.log()}")
        wait_count(es, "ai-interactions*", total, daemon)
        wait_for(lambda: len(all_records(s3, archive["bucket"])) >= total, timeout=60, what="the archive in S3")
        wait_for(lambda: len(layout.records()) >= total, timeout=60, what="the debug file")
        wait_for(lambda: len(fleet_reader.poll()) >= total, timeout=60, what="the fleet topic in Kafka")
        assert daemon.stop() == 0
    fleet_reader.close()
    Ledger.compare(expected, fleet_reader.records()).assert_exact()
    status, body = request("GET", f"{es_url}/ai-interactions*/_count")
    assert status == 200 and body["count"] == total
    assert_exactly(es, search["index"], expected)
    Ledger.compare(expected, all_records(s3, archive["bucket"])).assert_exact()
    Ledger.compare(expected, layout.records()).assert_exact()
    assert {key.rsplit("/", 1)[0] for key in list_keys(s3, archive["bucket"])} == {"interactions/2026/11/18"}
    assert "index template ai-interactions installed for ai-interactions" in daemon.log()
    assert "delivery failed" not in daemon.log()


def test_documents_refused_for_a_mapping_conflict_are_dead_lettered(layout, daemon_factory, cluster, es_url):
    es = cluster("conflict")
    es_config(layout, es_url, "conflict-%Y.%m.%d")
    records = list(generator.records(500, max_chars=500))
    bad = {r["request_id"] for n, r in enumerate(records) if n % 50 == 7}
    log = conflicting_backlog(es, layout, "conflict", records, bad)
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
    access = access_for(es_url)
    password = layout.root / "password"
    password.write_text(f"{access.password or 'secret'}\n")  # an open cluster takes any
    down = f"{es_url.split(':', 1)[0]}://127.0.0.1:{free_port()}"  # same scheme: a ca_file needs https everywhere
    # es_config() is given the host that is down, so it adds no credentials: the real ones (if any) go here.
    output = {key: value for key, value in access.output_options().items() if key != "password"}
    if not access.api_key:
        output.update(username=access.username or "logferry", password_file=str(password))
    es_config(layout, down, "hosts-%Y.%m.%d", output={"hosts": [down, es_url], **output})
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
    # The chunks cut off mid-delivery were sent again whole: what was indexed before the kill was
    # answered 409 and counted as delivered (the only trace of it is this log line, per chunk).
    resent = re.findall(r"output search: chunk \S+: (\d+) documents were already indexed \(sent again", daemon.log())
    assert 0 < sum(map(int, resent)) < total, "no document was answered 409 after the kills"


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
    es_config(layout, es9_url, "conflict9-%Y.%m.%d")
    records = list(generator.records(100, max_chars=300))
    conflicting_backlog(es, layout, "conflict9", records, {records[5]["request_id"]})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.dead_letters()) >= 1, timeout=60, what="the dead letter")
        wait_count(es, "conflict9-*", 99, daemon)
        assert daemon.stop() == 0
    (entry,) = layout.dead_letters()
    assert (entry["doc_id"], entry["status"]) == (records[5]["request_id"], 400)
    assert_exactly(es, "conflict9-*", [r["request_id"] for n, r in enumerate(records) if n != 5])
