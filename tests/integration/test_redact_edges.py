"""Redaction at the edges of the input, against the real daemon: a line holding a key twice, and a line too long to
be a record, whose copy the dead-letter store keeps. Neither lets a secret past a source's redact transform."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import new_daemon
from tests.support.daemon import Layout, render_toml, wait_for

pytestmark = pytest.mark.integration

EMAIL = "maria.garcia@example.com"
KEY = "sk-proj-" + "A1b2C3d4" * 6


@pytest.mark.parametrize("parse_workers", [0, 1])
def test_neither_a_key_written_twice_nor_an_oversized_line_carries_a_secret_past_redaction(
        layout: Layout, daemon_factory, parse_workers: int) -> None:
    layout.config.write_text(render_toml({
        "state_dir": layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "parse_workers": parse_workers,
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.2, "max_line_bytes": 4096, "transforms": ["pii"]}},
        "outputs": {"archive": {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"),
                                "buffer": {"flush_interval": 0.1, "retry_wait": 0.1}}},
        "transforms": {"pii": {"type": "redact"}},
    }))
    lines = [
        b'{"request_id": "r0", "input": "hello"}',
        f'{{"request_id": "r1", "input": "mail {EMAIL} key {KEY}", "input": "hi"}}'.encode(),
        f'{{"request_id": "r2", "input": "mail {EMAIL} key {KEY} {"pad " * 2000}"}}'.encode(),
        b'{"request_id": "r3", "input": "bye"}',
    ]
    (layout.logs / "agent.log").write_bytes(b"\n".join(lines) + b"\n")
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) == 3 and layout.dead_letters(), what="3 records and a dead letter")
        assert daemon.stop() == 0
    assert [(r["request_id"], r["input"]) for r in layout.records()] == [("r0", "hello"), ("r1", "hi"), ("r3", "bye")]
    (entry,) = layout.dead_letters()
    assert entry["offset"] == len(lines[0]) + len(lines[1]) + 2 and entry["truncated"]
    copy = (layout.state / "dead-letter" / "oversized").iterdir()
    (blob,) = list(copy)
    text = blob.read_text()
    assert text.startswith('{"request_id": "r2", "input": "mail [REDACTED:email] key [REDACTED:openai_key] pad')
    assert entry["blob_bytes"] == len(text.encode())
    stored = b"".join(path.read_bytes() for path in layout.out.iterdir()) + orjson.dumps(entry)
    assert EMAIL.encode() not in stored and KEY.encode() not in stored
