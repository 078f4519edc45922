"""Start a real, throw-away OpenSearch for the tests: :class:`SearchServer` with OpenSearch's distribution.

The server is OpenSearch's *test distribution*
(``org.opensearch.distribution.integ-test-zip:opensearch:<version>:zip`` on Maven Central), fetched,
cached and run exactly as :mod:`tests.support.elasticsearch` does for Elasticsearch (same cache root,
``opensearch/`` beside ``elasticsearch/``; same unprivileged user when run as root). 2.x runs on Java 11+
(the oldest JDK found that fits: 17 here), 3.x on Java 21+ (Temurin 25 here; ``LOGFERRY_OPENSEARCH_JAVA_HOME``
forces one).

The test distribution holds the core server and ``transport-netty4`` only: ``GET /``, ``_bulk``, mappings,
composable index templates (``_index_template``) and data streams work; there is **no security plugin**,
so no user, password or TLS can be tested against it (the basic-auth and SigV4 paths are tested against
a local HTTP endpoint instead, see :mod:`tests.support.sigv4`).

Set ``LOGFERRY_TEST_OPENSEARCH_URL`` to use an existing node instead (see :func:`external_url`).
"""

from __future__ import annotations

import os
from typing import Any

from tests.support.elasticsearch import Distribution, SearchServer

OPENSEARCH = Distribution(
    "opensearch", "OpenSearch", "org.opensearch.distribution.integ-test-zip:opensearch", "OPENSEARCH", {1: 11, 2: 11}
)
#: Versions verified to download and start here.
VERIFIED_VERSIONS = ("2.19.2", "3.3.2")
DEFAULT_VERSION = os.environ.get("LOGFERRY_TEST_OPENSEARCH_VERSION", VERIFIED_VERSIONS[0])


def external_url() -> str | None:
    """``LOGFERRY_TEST_OPENSEARCH_URL``: an OpenSearch node the tests use instead of their own."""
    return os.environ.get("LOGFERRY_TEST_OPENSEARCH_URL") or None


class OpenSearchServer(SearchServer):
    """A single-node OpenSearch on 127.0.0.1 for tests (see :class:`SearchServer`)."""

    distribution = OPENSEARCH

    def __init__(self, version: str = DEFAULT_VERSION, **kwargs: Any) -> None:
        super().__init__(version, **kwargs)
