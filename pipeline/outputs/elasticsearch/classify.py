"""What to do with a bulk response: pure functions, tested with literal responses.

Per document (an item of a ``_bulk`` response)::

    2xx                                   DELIVERED
    409 with op_type create               DUPLICATE   already indexed (a resend): delivered
    429, 5xx                              RETRY       the cluster is busy or failing: resend the item
    401, 403, 404                         RETRY       credentials, privileges, blocks or a missing index
                                                      with auto-create off: not the document's fault
    any other 4xx                         REJECT      the document itself is refused (mapping conflict):
                                                      dead letter, never resent

Per request (an HTTP error on ``_bulk`` as a whole)::

    413                                   SPLIT       resend in halves; a single document: REJECT
    401, 403                              AUTH        retry later; logged as an authentication failure
    408, 429, 5xx                         RETRY       retry later
    any other 4xx                         FAIL        the chunk cannot be delivered (set aside)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

#: Only what classification needs: the response to thousands of items stays small.
FILTER_PATH = "errors,items.*.status,items.*.error"
_RETRY_ITEM_4XX = frozenset({401, 403, 404, 429})


class Verdict(Enum):
    """The fate of one document of a bulk request."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    RETRY = "retry"
    REJECT = "reject"


class RequestVerdict(Enum):
    """What to do after the bulk request as a whole failed with an HTTP status."""

    SPLIT = "split"
    AUTH = "auth"
    RETRY = "retry"
    FAIL = "fail"


class MalformedResponse(ValueError):
    """The bulk response does not have the shape Elasticsearch gives it."""


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """One document's result: verdict, HTTP status and Elasticsearch's error."""

    verdict: Verdict
    status: int
    error_type: str = ""
    reason: str = ""
    error: Mapping[str, Any] | None = None

    @property
    def settled(self) -> bool:
        """Nothing more to do with this document (indexed, already there, or dead-lettered)."""
        return self.verdict is not Verdict.RETRY


DELIVERED = ItemOutcome(Verdict.DELIVERED, 200)


def item_verdict(status: int, op_type: str) -> Verdict:
    """The verdict for one item's HTTP status.

    >>> [item_verdict(s, "create").value for s in (201, 409, 429, 503, 400)]
    ['delivered', 'duplicate', 'retry', 'retry', 'reject']
    >>> item_verdict(409, "index").value
    'reject'
    """
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 409 and op_type == "create":
        return Verdict.DUPLICATE
    if status >= 500 or status in _RETRY_ITEM_4XX:
        return Verdict.RETRY
    return Verdict.REJECT


def request_verdict(status: int) -> RequestVerdict:
    """The verdict for an HTTP error status on the whole bulk request.

    >>> [request_verdict(s).value for s in (413, 401, 403, 429, 502, 408, 400, 404)]
    ['split', 'auth', 'auth', 'retry', 'retry', 'retry', 'fail', 'fail']
    """
    if status == 413:
        return RequestVerdict.SPLIT
    if status in (401, 403):
        return RequestVerdict.AUTH
    if status >= 500 or status in (408, 429):
        return RequestVerdict.RETRY
    return RequestVerdict.FAIL


def describe_error(error: object) -> tuple[str, str]:
    """(type, reason) of an Elasticsearch error object, the root cause appended to the reason.

    >>> describe_error({"type": "document_parsing_exception", "reason": "failed to parse [tokens]",
    ...                 "caused_by": {"type": "illegal_argument_exception", "reason": "bad: x"}})
    ('document_parsing_exception', 'failed to parse [tokens] (caused by illegal_argument_exception: bad: x)')
    >>> describe_error("plain text")
    ('error', 'plain text')
    """
    if not isinstance(error, Mapping):
        return "error", str(error) if error is not None else ""
    kind, reason = str(error.get("type", "error")), str(error.get("reason", ""))
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        reason += f" (caused by {cause.get('type', 'error')}: {cause.get('reason', '')})"
    return kind, reason


def classify_items(body: object, sent: int, op_type: str) -> list[ItemOutcome]:
    """One outcome per document sent, in order; MalformedResponse if the body is not a bulk response."""
    if not isinstance(body, Mapping):
        raise MalformedResponse(f"bulk response is not a JSON object: {str(body)[:200]!r}")
    items = body.get("items")
    if not isinstance(items, list) or len(items) != sent:
        got = len(items) if isinstance(items, list) else "no"
        raise MalformedResponse(f"bulk response has {got} items for {sent} documents")
    if body.get("errors") is False:
        return [DELIVERED] * sent
    return [_item_outcome(item, op_type) for item in items]


def _item_outcome(item: object, op_type: str) -> ItemOutcome:
    if not isinstance(item, Mapping) or len(item) != 1:
        raise MalformedResponse(f"bulk response item is not a single action: {str(item)[:200]!r}")
    (result,) = item.values()
    status = result.get("status") if isinstance(result, Mapping) else None
    if not isinstance(status, int):
        raise MalformedResponse(f"bulk response item has no status: {str(item)[:200]!r}")
    verdict = item_verdict(status, op_type)
    if verdict is Verdict.DELIVERED:
        return DELIVERED if status == 200 else ItemOutcome(verdict, status)
    error = result.get("error")
    kind, reason = describe_error(error)
    return ItemOutcome(verdict, status, kind, reason, error if isinstance(error, Mapping) else None)


#: A single document still too large for a bulk request on its own.
TOO_LARGE = ItemOutcome(
    Verdict.REJECT, 413, "request_entity_too_large",
    "the document alone exceeds the cluster's http.max_content_length",
)
