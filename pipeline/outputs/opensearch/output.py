"""OpenSearchOutput: the shared ``_bulk`` delivery on opensearch-py's async client.

What is delivered how, and what each failure does, is :mod:`pipeline.outputs.bulk.delivery`'s
(exactly once through deterministic ids and ``create``; 429/5xx resent alone; 400 to the
dead-letter store; 413 split; template at start). This module brings the client: building it
(basic auth, TLS, AWS SigV4), sending a ready bulk body, putting the composable template with
``PUT _index_template``, and the check at start (``GET /`` names the distribution and version).

The Elasticsearch client cannot be used: it sends ``compatible-with=8`` media types, which
OpenSearch refuses (HTTP 406), and it refuses servers that are not Elasticsearch.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import orjson
from opensearchpy import AsyncHttpConnection, AsyncOpenSearch, JSONSerializer
from opensearchpy.exceptions import ConnectionError as NoAnswer
from opensearchpy.exceptions import ImproperlyConfigured, TransportError

from pipeline.config import secret_value
from pipeline.errors import ConfigError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.bulk.config import tls_options
from pipeline.outputs.bulk.delivery import BulkOutput, HTTPFailure, NetworkFailure
from pipeline.outputs.bulk.payload import BulkPayload
from pipeline.outputs.elasticsearch.classify import FILTER_PATH
from pipeline.outputs.opensearch.config import OpenSearchOutputConfig

log = logging.getLogger("logferry.output.opensearch")
_client_logs = ("opensearch", "opensearchpy.trace")  # log every request (and failure) at INFO/WARNING

# Lower case, as the connection's own defaults: "Content-Type" beside its "content-type" would send
# both headers, and a SigV4 signature covers only one of them (the server refuses it).
_NDJSON_HEADERS = {"accept": "application/json", "content-type": "application/x-ndjson"}


def build_client(name: str, config: OpenSearchOutputConfig) -> AsyncOpenSearch:
    """The client for this output's cluster; ConfigError if a secret file, the AWS chain or an option is unusable."""
    options: dict[str, Any] = {}
    try:
        password = secret_value(config.password, config.password_file)
    except OSError as exc:
        raise ConfigError(f"outputs.{name}: cannot read {exc.filename}: {exc.strerror}") from exc
    if config.username and password is not None:
        options["http_auth"] = (config.username, password)
    if config.aws_sigv4:
        from pipeline.outputs.opensearch.sigv4 import signer  # botocore: ~6 MB, only for AWS

        options["http_auth"] = signer(name, config)
    options |= tls_options(name, config)
    try:
        return AsyncOpenSearch(
            config.hosts, connection_class=AsyncHttpConnection,  # the connection that signs (SigV4)
            timeout=config.request_timeout, http_compress=config.http_compress,
            max_retries=len(config.hosts) - 1,  # a connection error moves on to the next host, once each
            retry_on_status=(), retry_on_timeout=False,  # statuses and timeouts: our own policy
            serializer=BodySerializer(),
            **options,
        )  # fmt: skip
    except (ValueError, OSError, ImproperlyConfigured) as exc:
        raise ConfigError(f"outputs.{name}: {exc}") from exc


class BodySerializer(JSONSerializer):
    """JSON, except a :class:`BulkPayload`, which goes to aiohttp as it is."""

    def dumps(self, data: Any) -> Any:
        """``data`` unchanged if it is a BulkPayload, else as JSON."""
        return data if isinstance(data, BulkPayload) else super().dumps(data)


class OpenSearchOutput(BulkOutput):
    """Delivers chunks to OpenSearch with ``_bulk`` (see :mod:`pipeline.outputs.bulk.delivery`)."""

    product = "OpenSearch"

    def __init__(self, config: OpenSearchOutputConfig, context: OutputContext) -> None:
        super().__init__(config, context, log)
        self.aws_service = config.aws_service if config.aws_sigv4 else None
        for name in _client_logs:
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.ERROR)  # our own logs name each failure and its host
        self.client = build_client(context.name, config)

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()

    async def _call(
        self, method: str, path: str, request_timeout: float | None, body: Any = None,
        params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
    ) -> Any:  # fmt: skip
        """One request; the parsed answer, or HTTPFailure / NetworkFailure."""
        query: dict[str, Any] = dict(params or {})
        if request_timeout is not None:
            query["request_timeout"] = request_timeout
        try:
            return await self.client.transport.perform_request(method, path, params=query, body=body, headers=headers)
        except TransportError as exc:
            raise _failure(exc) from exc

    async def _probe(self, request_timeout: float) -> str:
        if self.aws_service == "aoss":  # Serverless has no GET / and no cluster APIs
            pattern = quote(self.config.effective_template_pattern, safe="*,")
            await self._call("GET", f"/_resolve/index/{pattern}", request_timeout)
            return f"OpenSearch Serverless at {self._hosts}, signed requests accepted"
        info = await self._call("GET", "/", request_timeout)
        health = await self._call("GET", "/_cluster/health", request_timeout)
        cluster, status = health.get("cluster_name"), health.get("status")
        return f"{describe_server(info)} at {self._hosts}, cluster {cluster} is {status}"

    async def _post_bulk(self, body: bytes) -> object:
        answer: object = await self._call(
            "POST", "/_bulk", None, body=body if self.config.http_compress else BulkPayload(body),
            params={"filter_path": FILTER_PATH}, headers=_NDJSON_HEADERS,
        )
        return answer

    async def _put_template(self, template: dict[str, Any], request_timeout: float | None) -> None:
        body = {"_meta" if key == "meta" else key: value for key, value in template.items() if key != "name"}
        await self._call("PUT", f"/_index_template/{quote(template['name'], safe='')}", request_timeout, body=body)


def describe_server(info: object) -> str:
    """Distribution and version from the answer to ``GET /``.

    >>> describe_server({"version": {"distribution": "opensearch", "number": "2.19.2"}})
    'OpenSearch 2.19.2'
    >>> describe_server({"version": {"number": "7.10.2"}})  # an Elasticsearch 7.10 domain of the service
    'Elasticsearch 7.10.2 (not OpenSearch)'
    """
    version = info.get("version") if isinstance(info, dict) else None
    if not isinstance(version, dict):
        return "a server of unknown version"
    number = version.get("number", "(unknown version)")
    if version.get("distribution") == "opensearch":
        return f"OpenSearch {number}"
    return f"Elasticsearch {number} (not OpenSearch)"


def _failure(exc: TransportError) -> HTTPFailure | NetworkFailure:
    """The client's error as the delivery's: the HTTP status and the server's error, or the network error."""
    if isinstance(exc, NoAnswer) or not isinstance(exc.status_code, int):
        cause = exc.info if isinstance(exc.info, BaseException) else exc.error
        return NetworkFailure(f"{type(exc).__name__}: {cause}")
    return HTTPFailure.of(exc.status_code, _error_of(exc))


def _error_of(exc: TransportError) -> object:
    """The ``error`` member of the answer, or the answer (an AWS front end's ``message``, plain text)."""
    answer: object = exc.info
    if not isinstance(answer, dict) and isinstance(exc.error, str):
        try:
            answer = orjson.loads(exc.error)
        except orjson.JSONDecodeError:
            answer = exc.error
    if isinstance(answer, dict):
        return answer.get("error") or answer.get("message") or answer.get("Message") or answer
    return answer or None
