"""Tail → buffer → OpenSearch on the real daemon and a real OpenSearch 2.19: every record indexed exactly once.

The node is OpenSearch's Maven test distribution (``opensearch_server``, one per session). It has no
security plugin, so credentials are checked by an HTTPS front (:mod:`tests.support.authfront`) that
verifies each request the way a secured cluster (basic auth) or Amazon OpenSearch Service (AWS SigV4,
recomputed with botocore's own signer) would, and forwards the good ones to the node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.integration.test_elasticsearch import DAY, conflicting_backlog, es_config, request_ids, wait_count
from tests.support.authfront import AuthFront, BasicCheck, SigV4Check
from tests.support.daemon import Layout, render_toml, wait_for
from tests.support.elasticsearch import Cluster, dropping_indices
from tests.support.opensearch import OpenSearchServer

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
KEY_ID, SECRET = "AKIDLOGFERRYTEST", "s3cr3t-signing-key"
# The daemon's AWS chain: these keys only, nothing from the machine's own AWS setup.
AWS_ENV = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture
def cluster(opensearch_url: str) -> Iterator[Callable[[str], Cluster]]:
    """The node, with the index prefixes a test names dropped before and after it."""
    with dropping_indices(opensearch_url) as use:
        yield use


def os_config(layout: Layout, url: str, index: str, output: dict[str, Any] | None = None,
              buffer: dict[str, Any] | None = None) -> Path:
    """tail → opensearch over ``layout`` (the Elasticsearch tests' config with the other type); /health
    reports an output failing for a second."""
    output, buffer = {"type": "opensearch", **(output or {})}, {"retry_limit": 1000, **(buffer or {})}
    config = es_config(layout, url, index, output, buffer)
    doc = tomllib.loads(config.read_text())
    doc["health"]["output_failing_after"] = 1.0
    config.write_text(render_toml(doc))
    return config


def check_connect(layout: Layout, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``logferry check --connect`` on the layout's config."""
    return subprocess.run([sys.executable, "-m", "pipeline", "check", "--connect", "-c", str(layout.config)],
                          capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **(env or {})})


def status_of(layout: Layout) -> tuple[dict[str, Any], str]:
    """The output's entry in /status and the text of ``logferry status``."""
    _, body = layout.http("/status")
    text = subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                          capture_output=True, text=True, timeout=60, check=False).stdout
    return orjson.loads(body)["outputs"]["search"], text


def test_every_record_once_with_the_template_applied(layout, daemon_factory, cluster, opensearch_url):
    os_ = cluster("os-interactions")
    os_config(layout, opensearch_url, "os-interactions-%Y.%m.%d")
    generator.write(str(layout.logs / "agent.log"), 3000, max_chars=3000)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(os_, "os-interactions-*", 3000, daemon)
        assert daemon.stop() == 0
    os_.assert_exactly("os-interactions-*", request_ids(3000))
    index = f"os-interactions-{DAY}"
    properties = os_.call("GET", f"/{index}/_mapping")[index]["mappings"]["properties"]
    assert properties["timestamp"]["type"] == "date", "the template's mapping, not a dynamic one"
    assert (properties["tokens"]["type"], properties["model"]["type"]) == ("long", "keyword")
    template = os_.call("GET", "/_index_template/os-interactions")["index_templates"][0]["index_template"]
    assert template["index_patterns"] == ["os-interactions-*"] and template["_meta"]["managed_by"] == "logferry"
    record = next(generator.records(1, max_chars=3000))
    stored = os_.source(index, record["request_id"])
    assert {k: v for k, v in stored.items() if k not in ("hostname", "ingested_at", "tag")} == record
    assert re.search(r"output search: OpenSearch 2\.\d+\.\d+ at http://127\.0\.0\.1:\d+, cluster \S+ is (green|yellow)",
                     daemon.log())
    assert "index template os-interactions installed for os-interactions-*" in daemon.log()
    checked = check_connect(layout)
    assert checked.returncode == 0, checked.stderr
    assert re.search(rf"output search: OpenSearch 2\.\d+\.\d+ at {opensearch_url}, cluster", checked.stderr)


def test_a_mapping_conflict_goes_to_the_dead_letter_store(layout, daemon_factory, cluster, opensearch_url):
    os_ = cluster("os-conflict")
    os_config(layout, opensearch_url, "os-conflict-%Y.%m.%d")
    records = list(generator.records(300, max_chars=300))
    bad = {r["request_id"] for n, r in enumerate(records) if n % 50 == 7}
    conflicting_backlog(os_, layout, "os-conflict", records, bad)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.dead_letters()) >= len(bad), timeout=60, what="dead letters")
        wait_count(os_, "os-conflict-*", len(records) - len(bad), daemon)
        assert daemon.stop() == 0
    os_.assert_exactly("os-conflict-*", sorted({r["request_id"] for r in records} - bad))
    dead = layout.dead_letters()
    assert {d["doc_id"] for d in dead} == bad and len(dead) == len(bad)
    for entry in dead:
        assert (entry["output"], entry["status"], entry["error_type"]) == ("search", 400, "mapper_parsing_exception")
        assert entry["reason"].startswith("opensearch refused the document (HTTP 400)")
        assert "[tokens]" in entry["reason"]
        assert orjson.loads(entry["line"])["tokens"] == "not-a-number"
    assert "refused by OpenSearch and dead-lettered" in daemon.log()


def test_sigkill_mid_bulk_twice_and_an_opensearch_restart_index_everything_once(
    layout, daemon_factory, cluster, opensearch_server: OpenSearchServer | None
):
    if opensearch_server is None:
        pytest.skip("needs the session's own OpenSearch (LOGFERRY_TEST_OPENSEARCH_URL is set)")
    os_ = cluster("os-crash")
    # Small bulks keep the delivery long enough (against the count's polling) to kill it mid-stream twice.
    os_config(layout, opensearch_server.url, "os-crash-%Y.%m.%d", output={"bulk_max_docs": 20, "bulk_concurrency": 2},
              buffer={"chunk_limit_records": 400, "workers": 2})
    total = 10_000
    generator.write(str(layout.logs / "agent.log"), total, max_chars=300)
    for _ in range(2):
        before = os_.count("os-crash-*")
        daemon = new_daemon(layout, daemon_factory).start()
        wait_count(os_, "os-crash-*", before + 300, daemon)
        daemon.kill()
        assert os_.count("os-crash-*") < total, "killed mid-stream"
    daemon = new_daemon(layout, daemon_factory).start()
    wait_count(os_, "os-crash-*", os_.count("os-crash-*") + 300, daemon)
    with opensearch_server.outage():
        wait_for(lambda: "delivery failed output=search" in daemon.log(), timeout=30, what="a failed delivery")
    wait_count(os_, "os-crash-*", total, daemon, timeout=120)
    assert daemon.stop() == 0
    os_.assert_exactly("os-crash-*", request_ids(total))
    resent = re.findall(r"output search: chunk \S+: (\d+) documents were already indexed \(sent again", daemon.log())
    assert 0 < sum(map(int, resent)) < total, "no document was answered 409 after the kills"


def test_a_data_stream_receives_every_record_once(layout, daemon_factory, cluster, opensearch_url):
    os_ = cluster("logs-ai.os-test")
    os_.call("DELETE", "/_data_stream/logs-ai.os-test", ok=(200, 404))
    os_config(layout, opensearch_url, "logs-ai.os-test", output={"data_stream": True})
    generator.write(str(layout.logs / "agent.log"), 300, max_chars=300)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(os_, "logs-ai.os-test*", 300, daemon)
        assert daemon.stop() == 0
    os_.assert_exactly("logs-ai.os-test", request_ids(300))
    assert [s["name"] for s in os_.call("GET", "/_data_stream/logs-ai.os-test")["data_streams"]] == ["logs-ai.os-test"]
    os_.call("DELETE", "/_data_stream/logs-ai.os-test", ok=(200, 404))


def test_sigv4_signed_requests_reach_amazon_opensearch_and_a_wrong_key_is_named(
    layout, daemon_factory, cluster, opensearch_url, tmp_path
):
    os_ = cluster("os-sigv4")
    check = SigV4Check({KEY_ID: SECRET}, REGION, "es")
    with AuthFront(opensearch_url, check, tmp_path / "certs") as front:
        os_config(layout, front.url, "os-sigv4-%Y.%m.%d", output={"aws_sigv4": True, "ca_file": str(front.ca_file)})
        generator.write(str(layout.logs / "agent.log"), 300, max_chars=300)
        wrong = {**AWS_ENV, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        with new_daemon(layout, daemon_factory, wrong) as daemon:
            refused = r"HTTP 403 error: The request signature we calculated does not match the signature you provided"
            wait_for(lambda: "delivery failed output=search" in daemon.log(), timeout=30, what="a failed delivery")
            start = rf"output search: cannot check OpenSearch at {re.escape(front.url)}: {refused}"
            assert re.search(start, daemon.log())
            entry, text = status_of(layout)
            assert entry["failing"] and re.search(refused, entry["last_error"])
            assert "output search: FAILING" in text and re.search(refused, text), text
            health = wait_for(lambda: (answer := layout.http("/health"))[0] == 503 and answer[1].decode(),
                              timeout=30, what="/health reporting the failing output")
            assert re.search(rf"output search failing for \d+s: .*{refused}", health), health
            assert daemon.stop() == 0
        assert front.forwarded == 0 and os_.count("os-sigv4-*") == 0, "nothing unsigned got through"
        assert "not-the-secret" not in daemon.log()
        with new_daemon(layout, daemon_factory, AWS_ENV) as daemon:
            wait_count(os_, "os-sigv4-*", 300, daemon)
            assert daemon.stop() == 0
    os_.assert_exactly("os-sigv4-*", request_ids(300))
    assert set(check.seen_keys) == {KEY_ID} and front.forwarded >= 3  # GET /, health, template, bulk
    assert "index template os-sigv4 installed" in daemon.log()
    assert SECRET not in daemon.log()


def test_basic_auth_over_tls_and_a_wrong_password_is_named(
    layout, daemon_factory, cluster, opensearch_url, tmp_path
):
    os_ = cluster("os-basic")
    with AuthFront(opensearch_url, BasicCheck("logferry", "right-password"), tmp_path / "certs") as front:
        password = layout.root / "password"
        password.write_text("wrong-password\n")
        os_config(layout, front.url, "os-basic-%Y.%m.%d",
                  output={"username": "logferry", "password_file": str(password), "ca_file": str(front.ca_file)})
        generator.write(str(layout.logs / "agent.log"), 300, max_chars=300)
        with new_daemon(layout, daemon_factory) as daemon:
            wait_for(lambda: "delivery failed output=search" in daemon.log(), timeout=30, what="a failed delivery")
            refused = "HTTP 401 error: Unauthorized"
            assert f"output search: cannot check OpenSearch at {front.url}: {refused}" in daemon.log()
            entry, text = status_of(layout)
            assert entry["failing"] and refused in entry["last_error"] and refused in text
            assert daemon.stop() == 0
        checked = check_connect(layout)
        assert checked.returncode == 1 and f"output search: cannot check OpenSearch at {front.url}: {refused}" \
            in checked.stderr, checked.stderr
        assert os_.count("os-basic-*") == 0 and layout.buffered_chunks("search"), "the records wait"
        password.write_text("right-password\n")  # read at start: fixed, and the daemon restarted
        with new_daemon(layout, daemon_factory) as daemon:
            wait_count(os_, "os-basic-*", 300, daemon)
            assert daemon.stop() == 0
    os_.assert_exactly("os-basic-*", request_ids(300))
    assert "password" not in daemon.log().replace("password_file", "")




CREDENTIAL_PROCESS = """\
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text() or 0) + 1 if counter.exists() else 1
counter.write_text(str(n))
# Ten minutes and two seconds: botocore renews credentials that have less than ten minutes left.
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10, seconds=2)
print(json.dumps({"Version": 1, "AccessKeyId": f"ASIATEMP{n:04d}", "SecretAccessKey": "temporary-secret",
                  "SessionToken": f"token-{n}", "Expiration": expires.isoformat()}))
"""


def test_temporary_aws_credentials_are_renewed_before_they_expire(
    layout, daemon_factory, cluster, opensearch_url, tmp_path
):
    # A credential_process hands out keys that expire (as STS, an instance or a task role do): the
    # daemon must sign with renewed ones as they run out, not with the first ones until refused.
    os_ = cluster("os-renew")
    script, counter = tmp_path / "credentials.py", tmp_path / "issued"
    script.write_text(CREDENTIAL_PROCESS)
    aws_config = tmp_path / "aws-config"
    aws_config.write_text(f"[profile logging]\ncredential_process = {sys.executable} {script} {counter}\n")
    env = {"AWS_CONFIG_FILE": str(aws_config), "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    check = SigV4Check({f"ASIATEMP{n:04d}": "temporary-secret" for n in range(1, 1000)}, REGION, "es")
    with AuthFront(opensearch_url, check, tmp_path / "certs") as front:
        os_config(layout, front.url, "os-renew-%Y.%m.%d", output={
            "aws_sigv4": True, "aws_profile": "logging", "aws_region": REGION, "ca_file": str(front.ca_file),
            "bulk_max_docs": 50})
        generator.write(str(layout.logs / "agent.log"), 300, max_chars=300)
        with new_daemon(layout, daemon_factory, env) as daemon:
            wait_count(os_, "os-renew-*", 300, daemon)
            assert daemon.stop() == 0
    os_.assert_exactly("os-renew-*", request_ids(300))
    assert front.refused == 0, "no request was signed with expired keys"
    assert len(set(check.seen_keys)) >= 2, f"signed with {sorted(set(check.seen_keys))} only"
