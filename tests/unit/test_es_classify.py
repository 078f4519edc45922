"""Bulk responses → per-document verdicts, on literal responses shaped like Elasticsearch's."""

from __future__ import annotations

import pytest

from pipeline.outputs.elasticsearch.classify import (
    DELIVERED,
    FILTER_PATH,
    MalformedResponse,
    RequestVerdict,
    Verdict,
    classify_items,
    item_verdict,
    request_verdict,
)

# The response of ES 8.19 to five creates, with filter_path=errors,items.*.status,items.*.error.
MIXED = {
    "errors": True,
    "items": [
        {"create": {"status": 201}},
        {"create": {"status": 409, "error": {
            "type": "version_conflict_engine_exception",
            "reason": "[a1]: version conflict, document already exists (current version [1])",
            "index_uuid": "wsyb3GzpTT-ikMCXFxkgjw", "shard": "0", "index": "ai-interactions-2026.11.18"}}},
        {"create": {"status": 400, "error": {
            "type": "document_parsing_exception",
            "reason": "[1:120] failed to parse field [tokens] of type [integer] in document with id 'a3'. "
                      "Preview of field's value: 'not-a-number'",
            "caused_by": {"type": "number_format_exception", "reason": 'For input string: "not-a-number"'}}}},
        {"create": {"status": 429, "error": {
            "type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation [shard_detail=...]"}}},
        {"create": {"status": 503, "error": {
            "type": "unavailable_shards_exception",
            "reason": "[ai-interactions-2026.11.18][0] primary shard is not active"}}},
    ],
}


def test_filter_path_asks_only_for_what_classification_reads() -> None:
    assert FILTER_PATH == "errors,items.*.status,items.*.error"


def test_no_errors_means_every_document_delivered() -> None:
    body = {"errors": False, "items": [{"create": {"status": 201}}, {"create": {"status": 201}}]}
    assert classify_items(body, 2, "create") == [DELIVERED, DELIVERED]


def test_each_item_gets_its_own_verdict_in_order() -> None:
    outcomes = classify_items(MIXED, 5, "create")
    assert [o.verdict for o in outcomes] == [
        Verdict.DELIVERED, Verdict.DUPLICATE, Verdict.REJECT, Verdict.RETRY, Verdict.RETRY,
    ]
    assert [o.status for o in outcomes] == [201, 409, 400, 429, 503]
    assert [o.settled for o in outcomes] == [True, True, True, False, False]


def test_a_rejected_document_carries_the_type_and_reason_with_its_cause() -> None:
    rejected = classify_items(MIXED, 5, "create")[2]
    assert rejected.error_type == "document_parsing_exception"
    assert rejected.reason.startswith("[1:120] failed to parse field [tokens] of type [integer]")
    assert rejected.reason.endswith('(caused by number_format_exception: For input string: "not-a-number")')
    assert rejected.error is not None and rejected.error["type"] == "document_parsing_exception"


def test_conflict_is_a_duplicate_only_for_create() -> None:
    body = {"errors": True, "items": [{"index": {"status": 409, "error": {"type": "version_conflict_engine_exception",
                                                                          "reason": "conflict"}}}]}
    assert classify_items(body, 1, "index")[0].verdict is Verdict.REJECT
    assert classify_items(body, 1, "create")[0].verdict is Verdict.DUPLICATE


def test_mapper_parsing_exception_is_rejected() -> None:
    body = {"errors": True, "items": [
        {"create": {"status": 201}},
        {"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "object mapping for [x]"}}},
    ]}
    assert [o.verdict for o in classify_items(body, 2, "create")] == [Verdict.DELIVERED, Verdict.REJECT]


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.DELIVERED), (201, Verdict.DELIVERED), (409, Verdict.DUPLICATE),
    (429, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY),
    (401, Verdict.RETRY), (403, Verdict.RETRY), (404, Verdict.RETRY),  # not the document's fault
    (400, Verdict.REJECT), (413, Verdict.REJECT), (422, Verdict.REJECT),
])
def test_item_verdicts(status: int, verdict: Verdict) -> None:
    assert item_verdict(status, "create") is verdict


@pytest.mark.parametrize(("status", "verdict"), [
    (413, RequestVerdict.SPLIT), (401, RequestVerdict.AUTH), (403, RequestVerdict.AUTH),
    (429, RequestVerdict.RETRY), (500, RequestVerdict.RETRY), (502, RequestVerdict.RETRY),
    (503, RequestVerdict.RETRY), (504, RequestVerdict.RETRY), (408, RequestVerdict.RETRY),
    (400, RequestVerdict.FAIL), (404, RequestVerdict.FAIL), (405, RequestVerdict.FAIL),
])
def test_request_verdicts(status: int, verdict: RequestVerdict) -> None:
    assert request_verdict(status) is verdict


@pytest.mark.parametrize("body", [
    None,
    "<html>bad gateway</html>",
    {"errors": False},
    {"errors": False, "items": [{"create": {"status": 201}}]},  # one item for two documents
    {"errors": True, "items": [{"create": {"status": 201}}, {"create": {}}]},
    {"errors": True, "items": [{"create": {"status": 201}}, ["not", "an", "item"]]},
    {"errors": True, "items": [{"create": {"status": 201}}, {"create": {"status": 201}, "index": {"status": 201}}]},
])
def test_malformed_responses_are_refused(body: object) -> None:
    with pytest.raises(MalformedResponse):
        classify_items(body, 2, "create")
