"""Elasticsearch's reasons for refusing documents go through the output's redact chain before they are
stored with the dead letters, logged or shown by status: a reason may quote the document."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame
from pipeline.clock import FakeClock
from pipeline.config import settings_from_dict
from pipeline.errors import RetryableError
from pipeline.outputs.base import Output
from pipeline.outputs.elasticsearch.output import ElasticsearchOutput
from pipeline.runtime import topology
from pipeline.runtime.topology import Topology

EMAIL = "maria.garcia@example.com"
CARD = "4111 1111 1111 1111"
# What Elasticsearch says of a date field given text: the value twice, once after "Preview".
REASON = {"type": "document_parsing_exception",
          "reason": f"[1:20] failed to parse field [sent] of type [date]. Preview of field's value: '{EMAIL}'",
          "caused_by": {"type": "illegal_argument_exception",
                        "reason": f"failed to parse date field [{EMAIL} card {CARD}] with format [date]"}}


@pytest.fixture
def built(tmp_path: Path) -> Iterator[Topology]:
    output = {"type": "elasticsearch", "hosts": ["http://127.0.0.1:9"], "index": "redact-errors",
              "install_template": False, "bulk_item_retries": 0}
    settings = settings_from_dict({
        "state_dir": str(tmp_path / "state"),
        "sources": {"agent": {"type": "tail", "paths": [str(tmp_path / "*.log")], "tag": "ai"}},
        "outputs": {"search": {**output, "transforms": ["pii"]}, "plain": {**output, "index": "plain-errors"}},
        "transforms": {"pii": {"type": "redact"}},
    })
    topo = topology.build(settings, FakeClock(1_795_000_000.0))
    try:
        yield topo
    finally:
        topo.release()


def answering(output: Output, answer: dict[str, Any]) -> ElasticsearchOutput:
    """``output`` with its client's bulk request answered by ``answer`` (the server's literal response)."""
    async def post_bulk(body: bytes) -> object:
        return answer
    assert isinstance(output, ElasticsearchOutput)
    output._post_bulk = post_bulk  # type: ignore[method-assign]  # the client's hook: no server needed
    return output


def chunk(tmp_path: Path, output: str) -> Chunk:
    directory = tmp_path / "state" / "buffer" / output
    queued = Chunk(directory, 1_795_000_000 // 3600 * 3600, f"c-{output}", ChunkState.STAGED)
    payload = orjson.dumps({"input": "mail [REDACTED:email]", "sent": "[REDACTED:email]"}) + b"\n"
    meta = {"src": "agent", "file": "7:42", "path": "/logs/agent.log", "offs": [0]}
    queued.write(header_frame(queued, 1, output), frame.encode(frame.KIND_DATA, 1, 1, meta, payload))
    queued.enqueue()
    return queued


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted((tmp_path / "state" / "dead-letter").rglob("*.jsonl"))
            for line in path.read_bytes().splitlines()]


@pytest.mark.asyncio
async def test_a_refusal_quoting_a_document_is_redacted_in_the_dead_letter_and_the_log(
    built: Topology, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = answering(built.outputs["search"], {"errors": True, "items": [{"create": {"status": 400,
                                                                                     "error": REASON}}]})
    with caplog.at_level(logging.WARNING):
        await output.write(chunk(tmp_path, "search"))
    await output.close()
    (entry,) = dead_letters(tmp_path)
    assert EMAIL not in orjson.dumps(entry).decode() and "4111" not in entry["reason"]
    assert "failed to parse date field [[REDACTED:email] card [REDACTED:payment_card]]" in entry["error_reason"]
    assert entry["reason"].startswith("elasticsearch refused the document (HTTP 400) document_parsing_exception")
    assert entry["status"] == 400 and entry["output"] == "search"
    assert "refused by" in caplog.text and EMAIL not in caplog.text and "4111" not in caplog.text


@pytest.mark.asyncio
async def test_a_refusal_retried_until_given_up_shows_no_finds_in_its_error(built: Topology, tmp_path: Path) -> None:
    busy = {"type": "es_rejected_execution_exception", "reason": f"queue full while indexing [{EMAIL}]"}
    output = answering(built.outputs["search"], {"errors": True, "items": [{"create": {"status": 429,
                                                                                     "error": busy}}]})
    with pytest.raises(RetryableError) as raised:  # what status shows as the output's last error
        await output.write(chunk(tmp_path, "search"))
    await output.close()
    assert "queue full while indexing [[REDACTED:email]]" in str(raised.value)


@pytest.mark.asyncio
async def test_an_output_without_a_redact_chain_keeps_the_servers_whole_reason(
    built: Topology, tmp_path: Path
) -> None:
    output = answering(built.outputs["plain"], {"errors": True, "items": [{"create": {"status": 400,
                                                                                    "error": REASON}}]})
    await output.write(chunk(tmp_path, "plain"))
    await output.close()
    (entry,) = dead_letters(tmp_path)
    assert f"failed to parse date field [{EMAIL} card {CARD}]" in entry["error_reason"]
