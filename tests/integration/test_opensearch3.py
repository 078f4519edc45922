"""The OpenSearch output against OpenSearch 3 (3.3.2's test distribution, Java 21+): the same promises as on 2.19.

A module of its own: its node (``opensearch3_url``) lives only while these tests run.
"""

from __future__ import annotations

import re

import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.integration.test_elasticsearch import conflicting_backlog, request_ids, wait_count
from tests.integration.test_opensearch import os_config
from tests.support.daemon import wait_for
from tests.support.elasticsearch import Cluster

pytestmark = pytest.mark.integration


def test_opensearch_3_every_record_once_and_a_conflict_dead_lettered(layout, daemon_factory, opensearch3_url):
    os_ = Cluster(opensearch3_url)
    os_config(layout, opensearch3_url, "os3-%Y.%m.%d")
    records = list(generator.records(500, max_chars=1000))
    conflicting_backlog(os_, layout, "os3", records, {records[7]["request_id"]})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.dead_letters()) >= 1, timeout=60, what="the dead letter")
        wait_count(os_, "os3-*", 499, daemon)
        assert daemon.stop() == 0
    os_.assert_exactly("os3-*", [r for n, r in enumerate(request_ids(500)) if n != 7])
    (entry,) = layout.dead_letters()
    assert (entry["doc_id"], entry["status"]) == (records[7]["request_id"], 400)
    assert re.search(r"output search: OpenSearch 3\.\d+\.\d+ at ", daemon.log())
    assert "index template os3 installed for os3-*" in daemon.log()
