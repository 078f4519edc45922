"""The tap's hub: a viewer's stream ends when the pipeline stops, also for one that connects just then;
a viewer of an output sees that output's variant of the records (redacted for a redacting output)."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.clock import FakeClock
from pipeline.config import EnrichConfig
from pipeline.runtime.tap import END, TapHub, Viewer
from pipeline.sources.base import LineBatch
from pipeline.transforms.plan import SourceRoute, TransformPlan
from pipeline.transforms.records import ProcessedBatch, RecordProcessor
from pipeline.transforms.redact.config import RedactTransformConfig
from pipeline.transforms.redact.transform import RedactTransform


def test_closing_ends_every_viewers_stream_even_a_full_one() -> None:
    hub = TapHub({})
    idle, full = hub.subscribe([], set()), hub.subscribe(["ai.**"], set())
    for n in range(full.queue.maxsize):
        full.queue.put_nowait(b"batch %d\n" % n)
    hub.close()
    assert idle.queue.get_nowait() == END
    drained = [full.queue.get_nowait() for _ in range(full.queue.qsize())]
    assert drained[-1] == END and len(drained) == full.queue.maxsize


def test_a_viewer_that_connects_after_the_close_ends_at_once_instead_of_waiting_forever() -> None:
    hub = TapHub({})
    hub.close()
    late = hub.subscribe([], set())  # its request was read as the pipeline stopped
    assert late.queue.get_nowait() == END
    assert not hub.viewers


EMAIL = "maria.garcia@example.com"


def redacting_batch() -> ProcessedBatch:
    """A batch of the source "agent" whose output "search" redacts and "archive" takes it raw."""
    redact = RedactTransform("pii", RedactTransformConfig(type="redact"))
    route = SourceRoute((), {"search": (3600, ("pii",)), "copy": (60, ("pii",))})
    plan = TransformPlan({"pii": redact}, {"agent": route})
    processor = RecordProcessor(EnrichConfig(hostname="host-1"), {3600, 60}, FakeClock(1_795_000_000.0), plan)
    data = b'{"input": "write to %s", "n": 1}\n{"input": "nothing here", "n": 2}\n' % EMAIL.encode()
    return processor.process(LineBatch("agent", "ai.chat", "7:42", "/logs/agent.jsonl", 0, len(data), data, None))


def shown(viewer: Viewer) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in viewer.queue.get_nowait().splitlines()]


def test_a_viewer_of_a_redacting_output_sees_the_records_it_takes_never_the_raw_ones() -> None:
    hub = TapHub({"agent": ["search", "copy", "archive"]})
    search, archive = hub.subscribe([], {"search"}), hub.subscribe([], {"archive"})
    both, everything = hub.subscribe([], {"search", "copy"}), hub.subscribe([], set())
    hub.publish(redacting_batch())
    records = shown(search)
    assert [r["n"] for r in records] == [1, 2] and EMAIL not in str(records)
    assert records[0]["input"] == "write to [REDACTED:email]" and records[0]["redactions"] == {"email": 1}
    assert shown(archive)[0]["input"] == f"write to {EMAIL}"  # the output without transforms takes it raw
    assert shown(both) == records  # two outputs taking the same variant (other widths): each record once
    assert shown(everything)[0]["input"] == f"write to {EMAIL}"  # no output named: the source's records


def test_a_viewer_of_a_raw_and_a_redacting_output_sees_both_variants() -> None:
    hub = TapHub({"agent": ["search", "archive"]})
    viewer = hub.subscribe([], {"search", "archive"})
    hub.publish(redacting_batch())
    assert [r["input"] for r in shown(viewer)] == ["write to [REDACTED:email]", "nothing here",
                                                  f"write to {EMAIL}", "nothing here"]
