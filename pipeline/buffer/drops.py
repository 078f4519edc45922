"""RecordDrops: records a source decided, after a restart, that its buffered copies must not be delivered.

A Kafka partition taken over by another member while this process was down is read again by
that member from the group's offset (:mod:`pipeline.sources.kafka.ownership`); what this process
had stored of it past that point is then the other member's to deliver. The source says so with a
:class:`DropRule` before any output delivers a chunk, and every output's chunk reader
(:meth:`pipeline.buffer.chunk.Chunk.frames`) leaves those records out. The rules are saved in
``record-drops.json`` (atomically, before the outputs start) so a second restart before those
chunks are delivered drops the same records, and each rule is forgotten once none of the chunks
that existed when it was made is left (set-aside chunks included: an operator may replay them).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import orjson

from pipeline.buffer.frame import Frame
from pipeline.durability import write_atomic

FILE_NAME = "record-drops.json"


@dataclass(frozen=True, slots=True)
class DropRule:
    """Records of ``source``'s ``file`` at offsets from ``offset`` on, in frames of commits up to
    ``seq``, in the chunks ``chunks`` (their ids), are not delivered."""

    source: str
    file: str
    offset: int
    seq: int
    chunks: tuple[str, ...]


class RecordDrops:
    """The rules in force, shared by every buffer's chunks; the source adds them at start."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self.rules: list[DropRule] = []
        self._by_chunk: dict[str, dict[tuple[str, str], list[DropRule]]] = {}

    def load(self, existing_chunks: Set[str]) -> None:
        """Read the saved rules and forget those whose chunks are all gone (rewriting the file if any went)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        rules = [DropRule(**{**item, "chunks": tuple(item["chunks"])}) for item in orjson.loads(raw)]
        kept = [replace(r, chunks=tuple(c for c in r.chunks if c in existing_chunks)) for r in rules]
        kept = [r for r in kept if r.chunks]
        self._set(kept)
        if kept != rules:
            self._save()

    def add(self, rules: Iterable[DropRule]) -> None:
        """Put ``rules`` in force, saved first (blocking: called before the outputs start)."""
        self._set([*self.rules, *rules])
        self._save()

    def for_chunk(self, chunk_id: str) -> dict[tuple[str, str], list[DropRule]] | None:
        """The rules covering a chunk, by (source, file); None for most chunks."""
        return self._by_chunk.get(chunk_id)

    def _set(self, rules: list[DropRule]) -> None:
        # Built aside and put in place at once: outputs read it from their worker threads meanwhile.
        by_chunk: dict[str, dict[tuple[str, str], list[DropRule]]] = {}
        for rule in sorted(rules, key=lambda r: r.seq):  # the first that covers a frame decides it
            for chunk_id in rule.chunks:
                by_chunk.setdefault(chunk_id, {}).setdefault((rule.source, rule.file), []).append(rule)
        self.rules, self._by_chunk = rules, by_chunk

    def _save(self) -> None:
        write_atomic(self.path, orjson.dumps([asdict(rule) for rule in self.rules]))


def apply(rules: dict[tuple[str, str], list[DropRule]], item: Frame) -> Frame | None:
    """``item`` without the records ``rules`` drop (None when none is left); the frame itself if none is.

    A frame's meta gives each record's offset (``offs``, one per line of the payload) and, when the
    committer computed them, the records' ids (``ids``), which are cut alike.
    """
    meta = item.meta
    for_file = rules.get((meta.get("src", ""), meta.get("file", "")))
    rule = next((r for r in for_file or () if item.seq <= r.seq), None)
    offsets = meta.get("offs")
    if rule is None or offsets is None:
        return item
    keep = [i for i, offset in enumerate(offsets) if offset < rule.offset]
    if len(keep) == len(offsets):
        return item
    if not keep:
        return None
    lines = item.payload.split(b"\n")  # each record one line, the payload ending in a newline
    kept_meta = {**meta, "offs": [offsets[i] for i in keep]}
    if (ids := meta.get("ids")) is not None:
        kept_meta["ids"] = [ids[i] for i in keep]
    payload = b"".join(lines[i] + b"\n" for i in keep)
    return replace(item, count=len(keep), meta=kept_meta, payload=payload, size=item.size)
