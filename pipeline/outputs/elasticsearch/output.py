"""ElasticsearchOutput: the shared ``_bulk`` delivery on the official Elasticsearch client.

What is delivered how, and what each failure does, is :mod:`pipeline.outputs.bulk.delivery`'s
(exactly once through deterministic ids and ``create``; 429/5xx resent alone; 400 to the
dead-letter store; 413 split; template at start). This module brings the client: building
it (auth, TLS), sending a ready bulk body, putting the template, and the check at start.
"""

from __future__ import annotations

import logging
from typing import Any

from elastic_transport import NdjsonSerializer
from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from pipeline.config import secret_value
from pipeline.errors import ConfigError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.bulk.config import tls_options
from pipeline.outputs.bulk.delivery import (
    PROGRESS_CHUNKS,
    START_TIMEOUT,
    BulkOutput,
    ChunkProgress,
    HTTPFailure,
    NetworkFailure,
    Tally,
    loggable_reason,
)
from pipeline.outputs.bulk.payload import BulkPayload
from pipeline.outputs.elasticsearch.classify import FILTER_PATH
from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig

__all__ = [
    "PROGRESS_CHUNKS",
    "START_TIMEOUT",
    "BulkBodySerializer",
    "ChunkProgress",
    "ElasticsearchOutput",
    "Tally",
    "build_client",
    "loggable_reason",
]

log = logging.getLogger("logferry.output.elasticsearch")
_transport_log = logging.getLogger("elastic_transport")  # logs every request at INFO

_NDJSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/x-ndjson"}


def build_client(name: str, config: ElasticsearchOutputConfig) -> AsyncElasticsearch:
    """The client for this output's cluster; ConfigError if a secret file or an option is unusable."""
    auth: dict[str, Any] = {}
    try:
        password = secret_value(config.password, config.password_file)
        api_key = secret_value(config.api_key, config.api_key_file)
    except OSError as exc:
        raise ConfigError(f"outputs.{name}: cannot read {exc.filename}: {exc.strerror}") from exc
    if config.username and password is not None:
        auth["basic_auth"] = (config.username, password)
    if api_key is not None:
        auth["api_key"] = api_key
    tls = tls_options(name, config)
    try:
        return AsyncElasticsearch(
            config.hosts, request_timeout=config.request_timeout, http_compress=config.http_compress,
            max_retries=len(config.hosts) - 1,  # a connection error moves on to the next host, once each
            retry_on_status=(), retry_on_timeout=False,  # statuses and timeouts: our own policy
            serializers={"application/x-ndjson": BulkBodySerializer()},
            **auth, **tls,
        )  # fmt: skip
    except (ValueError, OSError) as exc:
        raise ConfigError(f"outputs.{name}: {exc}") from exc


class BulkBodySerializer(NdjsonSerializer):
    """Sends a ready bulk body as it is.

    The client's own NDJSON serializer copies a bytes body twice (into a bytearray, then
    back to bytes): with bodies of up to ``bulk_max_bytes`` per request in flight, that is
    megabytes of resident memory for nothing. A :class:`BulkPayload` goes to aiohttp as it is.
    """

    def dumps(self, data: Any) -> bytes:
        """``data`` unchanged when it is a whole body (bytes ending in a newline, or a BulkPayload)."""
        if isinstance(data, BulkPayload):
            return data  # type: ignore[return-value]  # aiohttp takes it where the node passes bytes
        if isinstance(data, bytes) and data.endswith(b"\n"):
            return data
        return super().dumps(data)


class ElasticsearchOutput(BulkOutput):
    """Delivers chunks to Elasticsearch with ``_bulk`` (see :mod:`pipeline.outputs.bulk.delivery`)."""

    product = "Elasticsearch"

    def __init__(self, config: ElasticsearchOutputConfig, context: OutputContext) -> None:
        super().__init__(config, context, log)
        if _transport_log.level == logging.NOTSET:
            _transport_log.setLevel(logging.ERROR)  # our own logs name each failure and its host
        self.client = build_client(context.name, config)

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()

    def _client(self, request_timeout: float | None) -> AsyncElasticsearch:
        return self.client if request_timeout is None else self.client.options(request_timeout=request_timeout)

    async def _probe(self, request_timeout: float) -> str:
        client = self._client(request_timeout)
        try:
            health = (await client.cluster.health()).body
            version = await _node_versions(client)
        except (ApiError, TransportError) as exc:
            raise _failure(exc) from exc
        return (f"Elasticsearch {version} at {self._hosts}, cluster {health.get('cluster_name')} "
                f"is {health.get('status')}")

    async def _post_bulk(self, body: bytes) -> object:
        try:
            response = await self.client.perform_request(
                "PUT", "/_bulk", params={"filter_path": FILTER_PATH}, headers=_NDJSON_HEADERS,
                body=body if self.config.http_compress else BulkPayload(body), endpoint_id="bulk",
            )  # fmt: skip
        except (ApiError, TransportError) as exc:
            raise _failure(exc) from exc
        answer: object = response.body
        return answer

    async def _put_template(self, template: dict[str, Any], request_timeout: float | None) -> None:
        try:
            await self._client(request_timeout).indices.put_index_template(**template)
        except (ApiError, TransportError) as exc:
            raise _failure(exc) from exc


async def _node_versions(client: AsyncElasticsearch) -> str:
    """The nodes' versions (``GET /`` is not always available); 'unknown' without the privilege."""
    try:
        nodes = (await client.nodes.info(filter_path="nodes.*.version")).body.get("nodes", {})
    except ApiError as exc:
        if exc.meta.status in (401, 403):
            return "(version unknown: no monitor privilege)"
        raise
    return ",".join(sorted({str(node.get("version")) for node in nodes.values()})) or "unknown"


def _failure(exc: ApiError | TransportError) -> HTTPFailure | NetworkFailure:
    """The client's error as the delivery's: the HTTP status and the server's error, or the network error."""
    if isinstance(exc, ApiError):
        body = exc.body
        return HTTPFailure.of(exc.meta.status, body.get("error") if isinstance(body, dict) else body)
    return NetworkFailure(f"{type(exc).__name__}: {exc.message}")
