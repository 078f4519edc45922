"""BulkOutput: chunks become ``_bulk`` requests; every record is indexed once.

The delivery shared by the Elasticsearch and the OpenSearch outputs. A subclass brings its
client through three hooks (``_post_bulk``, ``_put_template``, ``_probe``) that raise
:class:`HTTPFailure` for an HTTP error status and :class:`NetworkFailure` when no answer
came; everything else is decided here.

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
  with the server's reason and are never resent.
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

from pipeline.buffer.chunk import Chunk
from pipeline.buffer.frame import FrameError
from pipeline.deadletter import line_fields
from pipeline.errors import RetryableError, UnrecoverableError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.bulk.config import BulkIndexConfig
from pipeline.outputs.elasticsearch.classify import (
    TOO_LARGE,
    ItemOutcome,
    MalformedResponse,
    RequestVerdict,
    Verdict,
    classify_items,
    describe_error,
    request_verdict,
)
from pipeline.outputs.elasticsearch.encoder import BulkEncoder, Document, EncodeError, bulk_body
from pipeline.outputs.elasticsearch.template import AddedFields, index_template
from pipeline.transforms.enrich import iso_millis

START_TIMEOUT = 5.0  # start() must not hold up the daemon's start for long
PROGRESS_CHUNKS = 1024  # chunks whose partial progress is remembered, at most


class HTTPFailure(Exception):
    """The server answered a request with an HTTP error status (raised by a subclass's hooks)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text  # one line: "HTTP 400 type: reason", the record's value left out

    @classmethod
    def of(cls, status: int, error: object) -> HTTPFailure:
        """From the status and the ``error`` member of the server's answer.

        >>> HTTPFailure.of(401, {"type": "security_exception", "reason": "bad password"}).text
        'HTTP 401 security_exception: bad password'
        >>> HTTPFailure.of(503, None).text
        'HTTP 503'
        """
        kind, reason = describe_error(error)
        return cls(status, f"HTTP {status} {kind}: {loggable_reason(reason)}" if error else f"HTTP {status}")


class NetworkFailure(Exception):
    """No answer: the server is unreachable, the connection broke, the request timed out, TLS failed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text  # one line: "ConnectionError: …"


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


class BulkOutput:
    """Delivers chunks with ``_bulk`` (see the module doc); subclasses bring the client."""

    #: The server's name in logs, errors and dead-letter reasons.
    product = "the cluster"

    def __init__(self, config: BulkIndexConfig, context: OutputContext, log: logging.Logger) -> None:
        self.config = config
        self.context = context
        self.name = context.name
        self.log = log
        self.encoder = BulkEncoder(config)
        self.progress = ChunkProgress()
        self.totals = Tally()
        self._template_pending = config.install_template
        self._hosts = config.hosts_for_logs
        self.start_error: str | None = None  # what the check at start found wrong (shown by status)

    # -- the client's hooks -----------------------------------------------------------------

    async def _post_bulk(self, body: bytes) -> object:
        """Send a bulk body (``filter_path`` = classify.FILTER_PATH); the parsed answer."""
        raise NotImplementedError

    async def _put_template(self, template: dict[str, Any], request_timeout: float | None) -> None:
        """Put the composable index template (``index_template()``'s keyword arguments)."""
        raise NotImplementedError

    async def _probe(self, request_timeout: float) -> str:
        """What the server is: "<product> <version> at <hosts>, …" for the log at start."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def rejected_records(self) -> int:
        """Documents the server refused one by one, written to the dead-letter store (for metrics)."""
        return self.totals.rejected

    async def start(self) -> None:
        """Check the cluster, log its version, install the template; log (never raise) on failure.

        What went wrong is also kept in ``start_error``, for status until a delivery succeeds.
        """
        self.start_error = None
        if not self.config.verify_certs and self.config.uses_tls:
            self.log.warning("output %s: TLS certificates are not verified (verify_certs = false)", self.name)
        timeout = min(self.config.request_timeout, START_TIMEOUT)
        try:
            described = await self.describe_server()
        except RetryableError as exc:
            self.start_error = str(exc)
            self.log.error("output %s: %s; delivery will retry", self.name, self.start_error)
            return
        self.log.info("output %s: %s", self.name, described)
        if self._template_pending:
            try:
                await self._install_template(timeout)
            except RetryableError as exc:
                self.start_error = str(exc)
                self.log.error("output %s: %s; retried before the first delivery", self.name, exc)

    async def describe_server(self) -> str:
        """What the server is ("OpenSearch 2.19.2 at …, cluster … is green"), asked now (``check --connect``).

        RetryableError("cannot check <product> at <hosts>: …") if it cannot be reached or refuses.
        """
        try:
            return await self._probe(min(self.config.request_timeout, START_TIMEOUT))
        except (HTTPFailure, NetworkFailure) as exc:
            raise RetryableError(f"cannot check {self.product} at {self._hosts}: {exc.text}") from exc

    # -- delivery -------------------------------------------------------------------------

    async def write(self, chunk: Chunk) -> None:
        """Index every record of ``chunk`` once; see the module doc for failures."""
        if self._template_pending:
            await self._install_template(None)
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
                in_flight.add(asyncio.create_task(self._send(*batch, done, tally)))
            while in_flight:
                in_flight = await _settle_first(in_flight)
        finally:
            await _cancel_all(in_flight, self.log)

    async def _send(self, docs: list[Document], body: bytes, done: set[int], tally: Tally) -> None:
        """One batch (its documents and their bulk body): resend the documents refused with 429/5xx
        a few times, then give up for now."""
        pending, last = docs, None
        first: bytes | None = body  # the first attempt sends the body built with the batch
        for attempt in range(self.config.bulk_item_retries + 1):
            if attempt:
                tally.resent += len(pending)
                await asyncio.sleep(self.config.bulk_item_retry_wait * 2 ** (attempt - 1))
            outcomes = await self._bulk(pending, first)
            first = None
            pending, last = await self._settle(pending, outcomes, done, tally)
            if not pending:
                return
        assert last is not None
        raise RetryableError(
            f"{len(pending)} documents still refused after {self.config.bulk_item_retries + 1} attempts, "
            f"last: HTTP {last.status} {last.error_type}: {self._shown(last.reason)}"
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

    async def _bulk(self, docs: list[Document], body: bytes | None = None) -> list[ItemOutcome]:
        """One outcome per document (``body``: theirs, if already built); a request too large is split in halves."""
        try:
            answer = await self._request(docs, body)
        except _TooLarge:
            if len(docs) == 1:
                return [TOO_LARGE]
            half = len(docs) // 2
            self.log.info("output %s: bulk request of %d documents too large (HTTP 413): splitting",
                          self.name, len(docs))
            return [*await self._bulk(docs[:half]), *await self._bulk(docs[half:])]
        try:
            return classify_items(answer, len(docs), self.config.op_type)
        except MalformedResponse as exc:
            raise RetryableError(f"unexpected bulk response from {self._hosts}: {exc}") from exc

    async def _request(self, docs: list[Document], body: bytes | None) -> object:
        """Send the documents to ``_bulk``; HTTP and network failures become our error types."""
        try:
            return await self._post_bulk(bulk_body(docs) if body is None else body)
        except HTTPFailure as exc:
            raise self._request_error(HTTPFailure(exc.status, self._shown(exc.text))) from exc
        except NetworkFailure as exc:
            raise RetryableError(f"{self.product} at {self._hosts}: {exc.text}") from exc

    def _request_error(self, exc: HTTPFailure) -> Exception:
        verdict = request_verdict(exc.status)
        if verdict is RequestVerdict.SPLIT:
            return _TooLarge(exc.text)
        if verdict is RequestVerdict.AUTH:
            self.log.error("output %s: authentication failed at %s (%s): check the credentials; delivery will retry",
                           self.name, self._hosts, exc.text)
            return RetryableError(f"authentication failed: {exc.text}")
        if verdict is RequestVerdict.RETRY:
            return RetryableError(f"{self.product} at {self._hosts}: {exc.text}")
        return UnrecoverableError(f"{self.product} at {self._hosts} refused the bulk request: {exc.text}")

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
        # The dead-letter entry keeps the server's whole reason; the log line must not quote the record.
        self.log.warning("output %s: %d documents refused by %s and dead-lettered, e.g. index=%s id=%s: "
                         "HTTP %d %s: %s", self.name, len(rejected), self.product, doc.index, doc.doc_id,
                         outcome.status, outcome.error_type, self._shown(outcome.reason))

    def _shown(self, reason: str) -> str:
        """A server's reason as it may be logged or shown by status: the quoted value cut, and what the
        records' redact transforms would redact masked (the rest of a reason may quote the document)."""
        return str(self.context.dead_letter({"reason": loggable_reason(reason)})["reason"])

    def _dead_entry(self, doc: Document, outcome: ItemOutcome, now: float) -> dict[str, Any]:
        # Through the records' transforms: a redact chain masks its finds in the reasons too.
        return self.context.dead_letter({
            "id": f"{doc.source}:{doc.file}:{doc.offset}", "time": iso_millis(now), "source": doc.source,
            "path": doc.path, "offset": doc.offset,
            "reason": f"{self.product.lower()} refused the document (HTTP {outcome.status}) "
                      f"{outcome.error_type}: {outcome.reason}",
            "output": self.name, "index": doc.index, "doc_id": doc.doc_id, "status": outcome.status,
            "error_type": outcome.error_type, "error_reason": outcome.reason, **line_fields(doc.line),
        })  # fmt: skip

    async def _install_template(self, request_timeout: float | None) -> None:
        """Put the index template; RetryableError if the cluster cannot be reached or refuses now.

        A template refused for good (a 4xx other than 401/408/429) is logged and not retried:
        delivery goes on with the cluster's own mappings.
        """
        template = index_template(self.config, AddedFields.of(self.context.enrich))
        try:
            await self._put_template(template, request_timeout)
        except HTTPFailure as exc:
            if exc.status == 401:  # the same clear "check the credentials" error as a bulk request
                raise self._request_error(exc) from exc
            if request_verdict(exc.status) is RequestVerdict.FAIL or exc.status == 403:
                self._template_pending = False
                self.log.error("output %s: index template %s refused: %s; indexing without it", self.name,
                               template["name"], exc.text)
                return
            raise RetryableError(f"cannot install index template {template['name']}: {exc.text}") from exc
        except NetworkFailure as exc:
            raise RetryableError(f"cannot install index template {template['name']}: {exc.text}") from exc
        self._template_pending = False
        self.log.info("output %s: index template %s installed for %s", self.name, template["name"],
                      template["index_patterns"][0])

    def _log_tally(self, chunk: Chunk, tally: Tally) -> None:
        if tally.duplicates:
            self.log.info("output %s: chunk %s: %d documents were already indexed (sent again after a retry "
                          "or a restart)", self.name, chunk.name, tally.duplicates)
        self.log.debug("output %s: chunk %s: delivered=%d duplicates=%d rejected=%d resent=%d", self.name,
                       chunk.name, tally.delivered, tally.duplicates, tally.rejected, tally.resent)


def _next_batch(batches: Iterator[list[Document]], chunk: Chunk) -> tuple[list[Document], bytes] | None:
    """The next batch and its bulk body (worker thread); reading errors become our error types."""
    try:
        docs = next(batches, None)
        return None if docs is None else (docs, rebased_body(docs))
    except (EncodeError, FrameError) as exc:
        raise UnrecoverableError(f"chunk {chunk.name} cannot be read: {exc}") from exc
    except OSError as exc:
        raise RetryableError(f"chunk {chunk.name} cannot be read: {exc.strerror}") from exc


def rebased_body(docs: list[Document]) -> bytes:
    r"""The bulk body of ``docs``, their records now views into it.

    The documents no longer hold on to the chunk's frames: a batch in flight keeps one copy of
    its records (the body), not two (body and frames). With a batch read ahead per chunk and
    ``workers`` chunks at once, that is ``bulk_max_bytes`` less resident memory per batch.

    >>> from pipeline.outputs.elasticsearch.encoder import Document
    >>> docs = [Document(n, "i", str(n), b'{"create":{}}\n', memoryview(b'{"n":%d}' % n), "", "", "", 0)
    ...         for n in (1, 2)]
    >>> rebased_body(docs) == b'{"create":{}}\n{"n":1}\n{"create":{}}\n{"n":2}\n', bytes(docs[1].record)
    (True, b'{"n":2}')
    >>> docs[1].record.obj is docs[0].record.obj
    True
    """
    body = bulk_body(docs)
    view, at = memoryview(body), 0
    for doc in docs:
        at += len(doc.action)
        end = at + len(doc.record)
        doc.record = view[at:end]
        at = end + 1
    return body


async def _settle_first(tasks: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """Wait for at least one task; re-raise its error; return the ones still running."""
    finished, running = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in finished:
        task.result()
    return running


async def _cancel_all(tasks: set[asyncio.Task[None]], log: logging.Logger) -> None:
    """Cancel the requests left after an error and wait for them; their own errors are only logged."""
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.debug("a concurrent bulk request failed as well: %r", result)


#: The server quotes the offending value after this (mapping errors): record contents.
_PREVIEW = "Preview of field"


def loggable_reason(reason: str) -> str:
    """The server's reason without the part that quotes the record's value.

    >>> loggable_reason("failed to parse field [tokens] of type [long]. Preview of field's value: 'my secret'")
    'failed to parse field [tokens] of type [long]. (value left out)'
    >>> loggable_reason("index read-only")
    'index read-only'
    """
    cut = reason.find(_PREVIEW)
    return reason if cut < 0 else f"{reason[:cut].rstrip()} (value left out)"
