"""Routing transforms: Elasticsearch gets redacted records, the file output the raw ones, each exactly once
across kill -9; the secrets never reach the search cluster or the daemon's log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Layout, Ledger, render_toml, wait_for
from tests.support.elasticsearch import Cluster, access_for, all_documents, dropping_indices

pytestmark = pytest.mark.integration

INDEX = "redact-it-%Y.%m.%d"
PATTERN = "redact-it-*"


@pytest.fixture
def cluster(es_url: str) -> Iterator[Callable[[str], Cluster]]:
    with dropping_indices(es_url) as use:
        yield use


def secrets(seq: int) -> dict[str, str]:
    """What record ``seq`` leaks when it leaks anything (every 5th one)."""
    return {"email": f"user{seq % 7}@example.com", "openai_key": "sk-proj-" + f"{seq:08d}" * 6,
            "payment_card": "4111 1111 1111 1111"}


def write_records(path: Path, count: int, max_chars: int = 300) -> None:
    with path.open("ab") as out:
        for record in generator.records(count, max_chars=max_chars):
            if record["seq"] % 5 == 0:
                leak = secrets(record["seq"])
                record["input"] = f"mail {leak['email']} key {leak['openai_key']} " + record["input"]
                record["messages"] = [{"role": "user", "content": f"card {leak['payment_card']}"}]
            out.write(orjson.dumps(record) + b"\n")


def config(layout: Layout, url: str, key_file: Path, parse_workers: int = 0) -> None:
    doc: dict[str, Any] = {
        "state_dir": layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "parse_workers": parse_workers,
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.5}},
        "outputs": {
            "search": {"type": "elasticsearch", "hosts": [url], "index": INDEX, "request_timeout": 10.0,
                       "transforms": ["pii"], "bulk_max_docs": 50, **access_for(url).output_options(),
                       "buffer": {"flush_interval": 0.2, "retry_wait": 0.1, "chunk_limit_records": 300}},
            "archive": {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"),
                        "buffer": {"flush_interval": 0.2, "retry_wait": 0.1, "chunk_limit_records": 300}},
        },
        "transforms": {"pii": {"type": "redact", "hash_key_file": key_file, "detectors": {"email": "hash"}}},
    }
    layout.config.write_text(render_toml(doc))


def grew(es: Cluster, count: int) -> bool:
    # Refreshed first: the index's own refresh (every second) let a CI run see 0, then all 6,000 at once,
    # so the kill came after the stream instead of in it.
    es.call("POST", f"/{PATTERN}/_refresh", ok=(200, 404))
    return es.count(PATTERN) >= count


def test_search_gets_redacted_records_and_the_archive_raw_ones_exactly_once_across_kill_9(
    layout, daemon_factory, cluster, es_url, tmp_path
):
    es = cluster("redact-it")
    key_file = tmp_path / "redact.key"
    key_file.write_text("test-key\n")
    config(layout, es_url, key_file)
    total = 6000
    write_records(layout.logs / "agent.log", total)
    for _ in range(2):
        before = es.count(PATTERN)
        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(grew, es, before + 300), timeout=60, interval=0.05,
                 what=f"documents before the kill:\n{daemon.log()[-3000:]}")
        daemon.kill()
        assert es.count(PATTERN) < total, "killed mid-stream"
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: es.count(PATTERN) >= total and len(layout.records()) >= total, timeout=90, interval=0.25,
                 what=f"every record in both outputs:\n{daemon.log()[-3000:]}")
        assert daemon.stop() == 0
    expected = [generator.request_id(1, n) for n in range(total)]
    es.assert_exactly(PATTERN, expected)
    Ledger.compare(expected, layout.records()).assert_exact()

    documents = {doc["request_id"]: doc for doc in all_documents(es_url, PATTERN)}
    raw = {record["request_id"]: record for record in layout.records()}
    leaked = [s for n in range(0, total, 5) for s in secrets(n).values()]
    search_text = orjson.dumps(list(documents.values())).decode()
    assert not [s for s in set(leaked) if s in search_text], "a secret reached the search cluster"
    logs = "".join(d.log() for d in daemon_factory)
    assert not [s for s in set(leaked) if s in logs], "a secret reached the daemon's log"

    seq0, seq5, seq12 = (generator.request_id(1, n) for n in (0, 5, 12))
    assert documents[seq5]["redactions"] == {"email": 1, "openai_key": 1, "payment_card": 1}
    assert documents[seq5]["messages"] == [{"role": "user", "content": "card [REDACTED:payment_card]"}]
    assert documents[seq5]["input"].startswith("mail [HMAC:email:")
    # user5@example.com is also seq 40's address: the same HMAC, so both stay joinable.
    assert documents[seq5]["input"].split()[1] == documents[generator.request_id(1, 40)]["input"].split()[1]
    assert "redactions" not in documents[seq12] and documents[seq12]["input"] == raw[seq12]["input"]
    assert raw[seq5]["input"].startswith(f"mail {secrets(5)['email']} key {secrets(5)['openai_key']} ")
    assert raw[seq0]["messages"][0]["content"] == "card 4111 1111 1111 1111" and "redactions" not in raw[seq0]
