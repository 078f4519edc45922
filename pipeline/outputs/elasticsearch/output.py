"""ElasticsearchOutput: chunks become ``_bulk`` requests; every record is indexed once.

Exactly once
------------
Document ids are deterministic (see :mod:`~pipeline.outputs.elasticsearch.encoder`) and the
default ``op_type`` is ``create``: a document sent again (after a timeout, a crash, a chunk
retried by the flusher) is answered 409 and counted as delivered, never indexed twice.
Within one process the output also remembers, per chunk, which records are settled, so a
retried chunk sends only what is left.

Failures (see :mod:`~pipeline.outputs.elasticsearch.classify` for the full table)
-------------------------------------------------------------------------------
* Documents refused with 429/5xx are resent, only them, a few times with backoff within
  the same ``write``; if some are still refused, ``RetryableError`` (progress is kept).
* Documents refused for themselves (a mapping conflict, 400) go to the dead-letter store
  with Elasticsearch's reason and are never resent.
* A request refused as too large (413) is split in halves down to single documents; a
  single document still too large is dead-lettered.
* Unreachable cluster, timeouts, 5xx and 429 on the whole request: ``RetryableError``.
  401/403: ``RetryableError`` too (the cluster's users or roles can be fixed while the
  daemon retries; a changed password file takes a reload, SIGHUP), logged as an
  authentication failure. Other 4xx on the whole
  request: ``UnrecoverableError`` (the chunk is set aside for ``logferry replay``).

The index template is installed before the first bulk request (at start, or at the first
delivery if the cluster was unreachable then), so new indices get its mappings.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from elastic_transport import NdjsonSerializer
from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from pipeline.buffer.chunk import Chunk
from pipeline.buffer.frame import FrameError
from pipeline.config import secret_value
from pipeline.deadletter import line_fields
from pipeline.errors import ConfigError, RetryableError, UnrecoverableError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.elasticsearch.classify import (
    FILTER_PATH,
    TOO_LARGE,
    ItemOutcome,
    MalformedResponse,
    RequestVerdict,
    Verdict,
    classify_items,
    describe_error,
    request_verdict,
)
from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig
from pipeline.outputs.elasticsearch.encoder import BulkEncoder, Document, EncodeError, bulk_body
from pipeline.outputs.elasticsearch.template import AddedFields, index_template
from pipeline.transforms.enrich import iso_millis

log = logging.getLogger("logferry.output.elasticsearch")
_transport_log = logging.getLogger("elastic_transport")  # logs every request at INFO

_NDJSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/x-ndjson"}
START_TIMEOUT = 5.0  # start() must not hold up the daemon's start for long
PROGRESS_CHUNKS = 1024  # chunks whose partial progress is remembered, at most


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
    tls: dict[str, Any] = {}
    if config.ca_file is not None:
        if not config.ca_file.is_file():
            raise ConfigError(f"outputs.{name}.ca_file: {config.ca_file} is not a readable file")
        tls["ca_certs"] = str(config.ca_file)
    if any(host.lower().startswith("https://") for host in config.hosts):
        tls["verify_certs"] = config.verify_certs
        tls["ssl_show_warn"] = False  # logged once at start instead of a warning per request
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
    megabytes of resident memory for nothing.
    """

    def dumps(self, data: Any) -> bytes:
        """``data`` unchanged when it is a whole body (bytes ending in a newline)."""
        if isinstance(data, bytes) and data.endswith(b"\n"):
            return data
        return super().dumps(data)


class ChunkProgress:
    """Positions of records already settled, per chunk, for retries of a chunk in this process.

    Bounded: the least recently used chunks are forgotten first (forgetting only costs resends,
    which deterministic ids make harmless).
    """

    def __init__(self, limit: int = PROGRESS_CHUNKS) -> None:
        self.limit = limit
        self._done: OrderedDict[str, set[int]] = OrderedDict()

    def of(self, chunk_id: str) -> set[int]:
        """The settled positions of a chunk (a live set: add to it)."""
        done = self._done.setdefault(chunk_id, set())
        self._done.move_to_end(chunk_id)
        while len(self._done) > self.limit:
            self._done.popitem(last=False)
        return done

    def forget(self, chunk_id: str) -> None:
        """The chunk is delivered."""
        self._done.pop(chunk_id, None)

    def __len__(self) -> int:
        return len(self._done)


@dataclass
class Tally:
    """Documents by outcome."""

    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    resent: int = 0

    def add(self, other: Tally) -> None:
        """Add another tally's counts to this one."""
        self.delivered += other.delivered
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.resent += other.resent


class _TooLarge(Exception):
    """HTTP 413 on a bulk request: split it."""


class ElasticsearchOutput:
    """Delivers chunks to Elasticsearch with ``_bulk`` (see the module doc)."""

    def __init__(self, config: ElasticsearchOutputConfig, context: OutputContext) -> None:
        self.config = config
        self.context = context
        self.name = context.name
        if _transport_log.level == logging.NOTSET:
            _transport_log.setLevel(logging.ERROR)  # our own logs name each failure and its host
        self.client = build_client(context.name, config)
        self.encoder = BulkEncoder(config)
        self.progress = ChunkProgress()
        self.totals = Tally()
        self._template_pending = config.install_template
        self._hosts = config.hosts_for_logs
        self.start_error: str | None = None  # what the check at start found wrong (shown by status)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def rejected_records(self) -> int:
        """Documents Elasticsearch refused one by one, written to the dead-letter store (for metrics)."""
        return self.totals.rejected

    async def start(self) -> None:
        """Check the cluster, log its version, install the template; log (never raise) on failure.

        What went wrong is also kept in ``start_error``, for status until a delivery succeeds.
        """
        self.start_error = None
        if not self.config.verify_certs and any(h.lower().startswith("https://") for h in self.config.hosts):
            log.warning("output %s: TLS certificates are not verified (verify_certs = false)", self.name)
        client = self.client.options(request_timeout=min(self.config.request_timeout, START_TIMEOUT))
        try:
            health = (await client.cluster.health()).body
            version = await _node_versions(client)
        except (ApiError, TransportError) as exc:
            self.start_error = f"cannot check Elasticsearch at {self._hosts}: {_failure_text(exc)}"
            log.error("output %s: %s; delivery will retry", self.name, self.start_error)
            return
        log.info("output %s: Elasticsearch %s at %s, cluster %s is %s", self.name, version, self._hosts,
                 health.get("cluster_name"), health.get("status"))
        if self._template_pending:
            try:
                await self._install_template(client)
            except RetryableError as exc:
                self.start_error = str(exc)
                log.error("output %s: %s; retried before the first delivery", self.name, exc)

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()

    # -- delivery -------------------------------------------------------------------------

    async def write(self, chunk: Chunk) -> None:
        """Index every record of ``chunk`` once; see the module doc for failures."""
        if self._template_pending:
            await self._install_template(self.client)
        done = self.progress.of(chunk.chunk_id)
        tally = Tally()
        try:
            await self._deliver(chunk, done, tally)
        finally:
            self.totals.add(tally)
            self._log_tally(chunk, tally)
        self.progress.forget(chunk.chunk_id)

    async def _deliver(self, chunk: Chunk, done: set[int], tally: Tally) -> None:
        """Send the chunk's batches, ``bulk_concurrency`` at a time; the first error wins."""
        # Read and encoded in a worker thread; the generator (and its file) is finalised
        # when dropped, also when this call is cancelled while a batch is being read.
        batches = self.encoder.batches(chunk, frozenset(done))
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while (batch := await asyncio.to_thread(_next_batch, batches, chunk)) is not None:
                while len(in_flight) >= self.config.bulk_concurrency:
                    in_flight = await _settle_first(in_flight)
                in_flight.add(asyncio.create_task(self._send(batch, done, tally)))
            while in_flight:
                in_flight = await _settle_first(in_flight)
        finally:
            await _cancel_all(in_flight)

    async def _send(self, docs: list[Document], done: set[int], tally: Tally) -> None:
        """One batch: resend the documents refused with 429/5xx a few times, then give up for now."""
        pending, last = docs, None
        for attempt in range(self.config.bulk_item_retries + 1):
            if attempt:
                tally.resent += len(pending)
                await asyncio.sleep(self.config.bulk_item_retry_wait * 2 ** (attempt - 1))
            outcomes = await self._bulk(pending)
            pending, last = await self._settle(pending, outcomes, done, tally)
            if not pending:
                return
        assert last is not None
        raise RetryableError(
            f"{len(pending)} documents still refused after {self.config.bulk_item_retries + 1} attempts, "
            f"last: HTTP {last.status} {last.error_type}: {loggable_reason(last.reason)}"
        )

    async def _settle(
        self, docs: list[Document], outcomes: list[ItemOutcome], done: set[int], tally: Tally
    ) -> tuple[list[Document], ItemOutcome | None]:
        """Count and dead-letter the outcomes; return the documents to resend and the last refusal."""
        retry: list[Document] = []
        rejected: list[tuple[Document, ItemOutcome]] = []
        last = None
        for doc, outcome in zip(docs, outcomes, strict=True):
            if outcome.verdict is Verdict.RETRY:
                retry.append(doc)
                last = outcome
            elif outcome.verdict is Verdict.REJECT:
                rejected.append((doc, outcome))
            else:
                tally.delivered += outcome.verdict is Verdict.DELIVERED
                tally.duplicates += outcome.verdict is Verdict.DUPLICATE
                done.add(doc.position)
        if rejected:
            await self._dead_letter(rejected)  # durable before the documents count as settled
            tally.rejected += len(rejected)
            done.update(doc.position for doc, _ in rejected)
        return retry, last

    async def _bulk(self, docs: list[Document]) -> list[ItemOutcome]:
        """One outcome per document; a request too large is split in halves."""
        try:
            body = await self._request(docs)
        except _TooLarge:
            if len(docs) == 1:
                return [TOO_LARGE]
            half = len(docs) // 2
            log.info("output %s: bulk request of %d documents too large (HTTP 413): splitting", self.name, len(docs))
            return [*await self._bulk(docs[:half]), *await self._bulk(docs[half:])]
        try:
            return classify_items(body, len(docs), self.config.op_type)
        except MalformedResponse as exc:
            raise RetryableError(f"unexpected bulk response from {self._hosts}: {exc}") from exc

    async def _request(self, docs: list[Document]) -> object:
        """Send the documents to ``_bulk``; HTTP and network failures become our error types."""
        try:
            response = await self.client.perform_request(
                "PUT", "/_bulk", params={"filter_path": FILTER_PATH}, headers=_NDJSON_HEADERS,
                body=bulk_body(docs), endpoint_id="bulk",
            )  # fmt: skip
        except ApiError as exc:
            raise self._request_error(exc) from exc
        except TransportError as exc:
            raise RetryableError(f"Elasticsearch at {self._hosts}: {_failure_text(exc)}") from exc
        body: object = response.body
        return body

    def _request_error(self, exc: ApiError) -> Exception:
        verdict = request_verdict(exc.meta.status)
        text = _failure_text(exc)
        if verdict is RequestVerdict.SPLIT:
            return _TooLarge(text)
        if verdict is RequestVerdict.AUTH:
            log.error("output %s: authentication failed at %s (%s): check the credentials; delivery will retry",
                      self.name, self._hosts, text)
            return RetryableError(f"authentication failed: {text}")
        if verdict is RequestVerdict.RETRY:
            return RetryableError(f"Elasticsearch at {self._hosts}: {text}")
        return UnrecoverableError(f"Elasticsearch at {self._hosts} refused the bulk request: {text}")

    # -- dead letters and template ----------------------------------------------------------

    async def _dead_letter(self, rejected: list[tuple[Document, ItemOutcome]]) -> None:
        """Write entries for refused documents now (fsynced), not at the next commit."""
        now = self.context.clock.time()
        entries = [orjson.dumps(self._dead_entry(doc, out, now), option=orjson.OPT_APPEND_NEWLINE)
                   for doc, out in rejected]
        try:
            await asyncio.to_thread(self.context.dead_letters.write, entries)
        except OSError as exc:
            raise RetryableError(f"cannot write dead letters: {exc.strerror}") from exc
        self.context.dead_letters.count += len(entries)
        doc, outcome = rejected[0]
        # The dead-letter entry keeps Elasticsearch's whole reason; the log line must not quote the record.
        log.warning("output %s: %d documents refused by Elasticsearch and dead-lettered, e.g. index=%s id=%s: "
                    "HTTP %d %s: %s", self.name, len(rejected), doc.index, doc.doc_id, outcome.status,
                    outcome.error_type, loggable_reason(outcome.reason))

    def _dead_entry(self, doc: Document, outcome: ItemOutcome, now: float) -> dict[str, Any]:
        return {
            "id": f"{doc.source}:{doc.file}:{doc.offset}", "time": iso_millis(now), "source": doc.source,
            "path": doc.path, "offset": doc.offset,
            "reason": f"elasticsearch refused the document (HTTP {outcome.status}) "
                      f"{outcome.error_type}: {outcome.reason}",
            "output": self.name, "index": doc.index, "doc_id": doc.doc_id, "status": outcome.status,
            "error_type": outcome.error_type, "error_reason": outcome.reason, **line_fields(doc.line),
        }  # fmt: skip

    async def _install_template(self, client: AsyncElasticsearch) -> None:
        """Put the index template; RetryableError if the cluster cannot be reached or refuses now.

        A template refused for good (a 4xx other than 401/408/429) is logged and not retried:
        delivery goes on with the cluster's own mappings.
        """
        template = index_template(self.config, AddedFields.of(self.context.enrich))
        try:
            await client.indices.put_index_template(**template)
        except ApiError as exc:
            if exc.meta.status == 401:  # the same clear "check the credentials" error as a bulk request
                raise self._request_error(exc) from exc
            if request_verdict(exc.meta.status) is RequestVerdict.FAIL or exc.meta.status == 403:
                self._template_pending = False
                log.error("output %s: index template %s refused: %s; indexing without it", self.name,
                          template["name"], _failure_text(exc))
                return
            raise RetryableError(f"cannot install index template {template['name']}: {_failure_text(exc)}") from exc
        except TransportError as exc:
            raise RetryableError(f"cannot install index template {template['name']}: {_failure_text(exc)}") from exc
        self._template_pending = False
        log.info("output %s: index template %s installed for %s", self.name, template["name"],
                 template["index_patterns"][0])

    def _log_tally(self, chunk: Chunk, tally: Tally) -> None:
        if tally.duplicates:
            log.info("output %s: chunk %s: %d documents were already indexed (sent again after a retry or a restart)",
                     self.name, chunk.name, tally.duplicates)
        log.debug("output %s: chunk %s: delivered=%d duplicates=%d rejected=%d resent=%d", self.name, chunk.name,
                  tally.delivered, tally.duplicates, tally.rejected, tally.resent)


def _next_batch(batches: Iterator[list[Document]], chunk: Chunk) -> list[Document] | None:
    """The next batch (worker thread); reading errors become our error types."""
    try:
        return next(batches, None)
    except (EncodeError, FrameError) as exc:
        raise UnrecoverableError(f"chunk {chunk.name} cannot be read: {exc}") from exc
    except OSError as exc:
        raise RetryableError(f"chunk {chunk.name} cannot be read: {exc.strerror}") from exc


async def _settle_first(tasks: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """Wait for at least one task; re-raise its error; return the ones still running."""
    finished, running = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in finished:
        task.result()
    return running


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel the requests left after an error and wait for them; their own errors are only logged."""
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.debug("a concurrent bulk request failed as well: %r", result)


async def _node_versions(client: AsyncElasticsearch) -> str:
    """The nodes' versions (``GET /`` is not always available); 'unknown' without the privilege."""
    try:
        nodes = (await client.nodes.info(filter_path="nodes.*.version")).body.get("nodes", {})
    except ApiError as exc:
        if exc.meta.status in (401, 403):
            return "(version unknown: no monitor privilege)"
        raise
    return ",".join(sorted({str(node.get("version")) for node in nodes.values()})) or "unknown"


def _failure_text(exc: ApiError | TransportError) -> str:
    """A one-line reason: the HTTP status and Elasticsearch's error type and reason, or the network error."""
    if isinstance(exc, ApiError):
        body = exc.body
        error = body.get("error") if isinstance(body, dict) else body
        kind, reason = describe_error(error)
        return f"HTTP {exc.meta.status} {kind}: {loggable_reason(reason)}" if error else f"HTTP {exc.meta.status}"
    return f"{type(exc).__name__}: {exc.message}"


#: Elasticsearch quotes the offending value after this (mapping errors): record contents.
_PREVIEW = "Preview of field"


def loggable_reason(reason: str) -> str:
    """Elasticsearch's reason without the part that quotes the record's value.

    >>> loggable_reason("failed to parse field [tokens] of type [long]. Preview of field's value: 'my secret'")
    'failed to parse field [tokens] of type [long]. (value left out)'
    >>> loggable_reason("index read-only")
    'index read-only'
    """
    cut = reason.find(_PREVIEW)
    return reason if cut < 0 else f"{reason[:cut].rstrip()} (value left out)"
