"""Tap: a live view of enriched records as they flow, for operators (``logferry tap``).

A viewer of named outputs sees what they take: an output with its own transforms gets its
variant (redacted behind a redact chain), so tapping it never shows what it would not store.
Without an output named, a viewer sees the records as the source's transforms left them.

Best effort by design: a slow viewer loses records from its own view (counted and shown
to it), never slows the pipeline. With nobody watching, the cost is one set check per
batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pipeline.runtime.routing import tag_matches
from pipeline.transforms.records import ProcessedBatch

QUEUE_BATCHES = 64
END = b""  # queued after the last batch: the pipeline stopped (or reloads), the viewer's stream ends


@dataclass(eq=False)
class Viewer:
    """One connected viewer and its filters."""

    tags: list[str]
    outputs: set[str]
    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_BATCHES))
    dropped: int = 0


class TapHub:
    """Fans processed batches out to viewers."""

    def __init__(self, routes: dict[str, list[str]]) -> None:
        self.routes = routes  # source → names of the outputs it feeds
        self.viewers: set[Viewer] = set()
        self.closed = False

    def subscribe(self, tags: list[str], outputs: set[str]) -> Viewer:
        """Start receiving batches whose tag matches ``tags`` and that feed one of ``outputs`` (empty: any)."""
        viewer = Viewer(tags or ["**"], outputs)
        if self.closed:  # connected while the pipeline stopped: nothing will come, its stream ends at once
            viewer.queue.put_nowait(END)
        else:
            self.viewers.add(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        """Stop sending to a viewer."""
        self.viewers.discard(viewer)

    def close(self) -> None:
        """End every viewer's stream (the pipeline stops): a viewer sees its stream end, not a silence."""
        self.closed = True
        for viewer in self.viewers:
            if viewer.queue.full():
                viewer.queue.get_nowait()  # its oldest batch makes room for the end (it is a best-effort view)
            viewer.queue.put_nowait(END)

    def publish(self, item: ProcessedBatch) -> None:
        """Offer one batch's enriched records to every interested viewer.

        A viewer of named outputs sees what those outputs take: an output with its own transforms
        gets its variant (redacted, for a redact chain), never the source's records.
        """
        if not self.viewers or not item.records:
            return
        batch = item.batch
        routed = self.routes.get(batch.source, [])
        joined: dict[int, bytes] = {}  # id of a variant's groups → its lines, joined once per batch
        for viewer in list(self.viewers):
            if not tag_matches(viewer.tags, batch.tag):
                continue
            outputs = [output for output in routed if output in viewer.outputs]
            if viewer.outputs and not outputs:
                continue
            try:
                viewer.queue.put_nowait(_view(item, outputs, joined))
            except asyncio.QueueFull:
                viewer.dropped += item.records


def _view(item: ProcessedBatch, outputs: list[str], joined: dict[int, bytes]) -> bytes:
    """The lines of ``outputs``' variants, each distinct one once (no outputs: the source's own, or every
    output's variant when each has its own chain: the processor then makes none of the source's own)."""
    source = next(iter(item.groups.values()), None)
    views: dict[bytes, None] = {}
    if outputs:
        chosen = [item.by_output.get(output, source) for output in outputs]
    else:
        chosen = [source] if source is not None else [*item.by_output.values()]
    for groups in chosen:
        if groups is None:
            continue
        data = joined.get(id(groups))
        if data is None:
            data = joined[id(groups)] = b"".join(line for group in groups.values() for line in group.lines)
        views.setdefault(data)
    return b"".join(views)
