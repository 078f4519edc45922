"""Real Elasticsearch servers for the integration tests, started once per session when a test asks.

``es_url``: ``LOGFERRY_TEST_ES_URL`` if set, else a throw-away 8.19.21 (about 8 s to start here).
``es_server``: that throw-away server itself (None with an external cluster), for outages.
``es9_url``: a throw-away 9.5.4 for a smaller subset (about 9 s to start, ~1 GB of memory).
``es_small_url``: a throw-away 8.19.21 with ``http.max_content_length: 1kb``, for HTTP 413.
``kafka``: a throw-away single-node Kafka 4.4.0 (KRaft) for the session, started when a test asks.
``s3_server``: a throw-away S3 (moto) for this directory's modules that ship to S3 besides Elasticsearch.
``es_secure``: a throw-away 8.19.21 with security on, HTTPS, a file-realm user (and an API key where the
distribution can make one), about 12 s to start.
``opensearch_server`` / ``opensearch_url``: a throw-away OpenSearch 2.19.2 for the session (about 12 s to
start, ~700 MB), or ``LOGFERRY_TEST_OPENSEARCH_URL``; started only when an OpenSearch test runs.
``opensearch3_url``: a throw-away OpenSearch 3.3.2 (Java 21+) for a smaller subset, for its module only
(``LOGFERRY_TEST_OPENSEARCH3=0`` skips it; with an external node it is opt-in: ``=1``).

The extra servers run by default (the whole Elasticsearch module takes about a minute on two
cores); ``LOGFERRY_TEST_ES9=0`` / ``LOGFERRY_TEST_ES_413=0`` / ``LOGFERRY_TEST_ES_SECURITY=0`` skip them.
With an external cluster (``LOGFERRY_TEST_ES_URL``) they are opt-in instead: ``=1``. Each lives for the
module that uses it only, so at most three servers run at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import opensearch
from tests.support.elasticsearch import ElasticsearchServer, SecuredElasticsearchServer, external_url
from tests.support.kafka import KafkaBroker
from tests.support.s3server import S3Server

ES8 = "8.19.21"
ES9 = "9.5.4"


def _wanted(variable: str) -> bool:
    """Whether an extra throw-away server should run: 0/1 in ``variable``, else only without an external one."""
    value = os.environ.get(variable, "").strip()
    return value == "1" if value else external_url() is None


@pytest.fixture(scope="session")
def es_server() -> Iterator[ElasticsearchServer | None]:
    """The session's own Elasticsearch 8 (None when LOGFERRY_TEST_ES_URL names a cluster)."""
    if external_url():
        yield None
        return
    with ElasticsearchServer(ES8) as server:
        yield server


@pytest.fixture(scope="session")
def es_url(es_server: ElasticsearchServer | None) -> str:
    """Base URL of the Elasticsearch the tests index into."""
    url = external_url() if es_server is None else es_server.url
    assert url is not None
    return url


@pytest.fixture(scope="module")
def es9_url() -> Iterator[str]:
    """Base URL of a throw-away Elasticsearch 9 (LOGFERRY_TEST_ES9=0 skips it)."""
    if not _wanted("LOGFERRY_TEST_ES9"):
        pytest.skip("Elasticsearch 9 tests are off: LOGFERRY_TEST_ES9=1 runs them")
    with ElasticsearchServer(ES9) as server:
        yield server.url


@pytest.fixture(scope="module")
def es_small_url() -> Iterator[str]:
    """Base URL of a throw-away Elasticsearch 8 refusing requests over 1 kB (LOGFERRY_TEST_ES_413=0 skips it)."""
    if not _wanted("LOGFERRY_TEST_ES_413"):
        pytest.skip("the HTTP 413 test is off: LOGFERRY_TEST_ES_413=1 runs it")
    with ElasticsearchServer(ES8, settings={"http.max_content_length": "1kb"}) as server:
        yield server.url


@pytest.fixture(scope="module")
def es_secure() -> Iterator[SecuredElasticsearchServer]:
    """A throw-away Elasticsearch 8 with security and TLS on HTTP (LOGFERRY_TEST_ES_SECURITY=0 skips it)."""
    if not _wanted("LOGFERRY_TEST_ES_SECURITY"):
        pytest.skip("the secured Elasticsearch tests are off: LOGFERRY_TEST_ES_SECURITY=1 runs them")
    with SecuredElasticsearchServer(ES8) as server:
        yield server


@pytest.fixture(scope="session")
def opensearch_server() -> Iterator[opensearch.OpenSearchServer | None]:
    """The session's own OpenSearch (None when LOGFERRY_TEST_OPENSEARCH_URL names a node)."""
    if opensearch.external_url():
        yield None
        return
    with opensearch.OpenSearchServer() as server:
        yield server


@pytest.fixture(scope="session")
def opensearch_url(opensearch_server: opensearch.OpenSearchServer | None) -> str:
    """Base URL of the OpenSearch the tests index into."""
    url = opensearch.external_url() if opensearch_server is None else opensearch_server.url
    assert url is not None
    return url


@pytest.fixture(scope="module")
def opensearch3_url() -> Iterator[str]:
    """Base URL of a throw-away OpenSearch 3 (LOGFERRY_TEST_OPENSEARCH3=0 skips it)."""
    value = os.environ.get("LOGFERRY_TEST_OPENSEARCH3", "").strip()
    if not (value == "1" if value else opensearch.external_url() is None):
        pytest.skip("OpenSearch 3 tests are off: LOGFERRY_TEST_OPENSEARCH3=1 runs them")
    with opensearch.OpenSearchServer(opensearch.VERIFIED_VERSIONS[1]) as server:
        yield server.url


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server for the module (test_s3.py has its own ``s3``)."""
    log: Path = tmp_path_factory.mktemp("moto") / "moto.log"
    with S3Server(log) as server:
        yield server


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    """The session's single-node Kafka 4.4.0 (KRaft, with a SASL_SSL listener too), about 7 s to start once its
    jars are cached."""
    with KafkaBroker(secure=True) as broker:
        yield broker
