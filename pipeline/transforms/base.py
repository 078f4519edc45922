"""Transform protocol: a named step over one batch of enriched records.

Transforms work on a batch, not a record (see the speed amendment in the style guide): they get
the batch's serialised lines and the records as parsed (without the enrichment fields, read-only)
and return both, replacing only the lines they change. They never drop or reorder a record:
the buffer frames keep each line's source offset, and exactly-once depends on that. The records
are a sequence, parsed from the block's lines when read (:class:`~pipeline.transforms.lines.ParsedRecords`):
a transform that needs only a few reads only those, and returns the ones it changed over the
rest (:class:`Replaced`).

A transform may run in a parse worker process (:mod:`pipeline.runtime.parse_worker`): it is pickled
into the worker's setup (a transform holding what does not pickle gives ``__reduce__``: its name
and config, and any secret it read at load time, never re-read from disk there), its counters
there are taken after each block (:meth:`Transform.take_tally`) and added to the daemon's own
(:meth:`Transform.add_tally`), so /status and /metrics count every record wherever it ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pipeline.transforms.lines import LazyRecords

Records = Sequence[dict[str, Any]]  # a list, or the block's records parsed on demand (ParsedRecords)


class Transform(Protocol):
    """A configured ``[transforms.NAME]`` at run time."""

    name: str

    def apply(self, lines: list[bytes], records: Records) -> tuple[list[bytes], Records]:
        """The batch after this transform; the lists given are not changed (they may be shared)."""
        ...

    def dead_letter(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A dead-letter entry of a source this transform runs on, as it may be stored."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for /status and /metrics."""
        ...

    def take_tally(self) -> Any:
        """The counters added since the last take, which are reset (picklable: a worker sends it)."""
        ...

    def add_tally(self, tally: Any) -> None:
        """Add another instance's :meth:`take_tally` to these counters."""
        ...


class Replaced(LazyRecords):
    """``records`` with a few replaced (index → record): what a transform that changed a few returns,
    without reading every other record (they may be parsed only when read)."""

    def __init__(self, records: Records, changes: dict[int, dict[str, Any]]) -> None:
        self.records, self.changes = records, changes

    def __len__(self) -> int:
        return len(self.records)

    def get(self, index: int) -> dict[str, Any]:
        """The replacement at ``index`` if there is one, else the record there."""
        changed = self.changes.get(index)
        return self.records[index] if changed is None else changed
