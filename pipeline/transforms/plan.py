"""TransformPlan: which transforms run for which source and output, and the variants they make of a batch.

Shared by the event loop's :class:`~pipeline.transforms.records.RecordProcessor` and the parse workers
(:mod:`pipeline.runtime.parse_worker`), which get the plan pickled in their setup: this module imports
nothing but :mod:`pipeline.transforms.base`, so a worker loads the transforms' own modules and no more.
Both group what :meth:`TransformPlan.variants` gives, so a block's records come out the same bytes
wherever it was parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.transforms.base import Records, Transform

Chain = tuple[str, ...]
Batch = tuple[list[bytes], Records]


@dataclass(slots=True)
class SourceRoute:
    """The transforms of one source: its own chain, and each routed output's chain (non-empty) and width.

    ``plain``: some output of the source takes its records without a chain of its own (false when every
    routed output has one: the batch's own groups would be made for nobody).
    """

    chain: Chain = ()
    outputs: dict[str, tuple[int, Chain]] = field(default_factory=dict)
    plain: bool = True

    def dead_letter_chain(self) -> Chain:
        """What a bad line of this source goes through before it is stored: the source's chain, then every
        transform any routed output applies (a line is stored once, so it is masked as the strictest output
        would mask its records: a redact on one output only still keeps its matches out of the store)."""
        names = [*self.chain, *(name for _, chain in self.outputs.values() for name in chain)]
        return tuple(dict.fromkeys(names))


@dataclass(slots=True)
class Variants:
    """A batch after its source's chain (``lines``), and each routed output's variant by output name:
    (its width, its chain, its lines). Outputs with the same chain share one list; a chain that changed
    no record hands back the very list it was given (transforms return their input unchanged then)."""

    lines: list[bytes]
    outputs: dict[str, tuple[int, Chain, list[bytes]]]


@dataclass(slots=True)
class TransformPlan:
    """Every configured transform by name, and which run for which source and output."""

    transforms: dict[str, Transform] = field(default_factory=dict)
    routes: dict[str, SourceRoute] = field(default_factory=dict)

    def run(self, chain: Chain, lines: list[bytes], records: Records,
            memo: dict[Chain, Batch] | None = None) -> Batch:
        """``chain`` applied to a batch; ``memo`` keeps every prefix so chains that share one compute it once."""
        done: Batch = (lines, records)
        for n in range(1, len(chain) + 1):
            cached = memo.get(chain[:n]) if memo is not None else None
            done = cached if cached is not None else self.transforms[chain[n - 1]].apply(*done)
            if memo is not None:
                memo[chain[:n]] = done
        return done

    def variants(self, route: SourceRoute, lines: list[bytes], records: Records) -> Variants:
        """The source's chain over a batch, then each routed output's on that: each distinct chain once."""
        lines, records = self.run(route.chain, lines, records)
        memo: dict[Chain, Batch] = {}
        outputs = {}
        for output, (width, chain) in route.outputs.items():
            outputs[output] = (width, chain, self.run(chain, lines, records, memo)[0])
        return Variants(lines, outputs)

    def dead_letter(self, chain: Chain, entry: dict[str, Any]) -> dict[str, Any]:
        """A dead-letter entry as the source's transforms let it be stored (redact masks its line)."""
        for name in chain:
            entry = self.transforms[name].dead_letter(entry)
        return entry

    def take_tallies(self) -> dict[str, Any]:
        """Each transform's counters since the last take (a parse worker's, sent with its answer), reset."""
        return {name: transform.take_tally() for name, transform in self.transforms.items()}

    def add_tallies(self, tallies: dict[str, Any]) -> None:
        """Count what a parse worker's transforms counted, as if they had run here."""
        for name, tally in tallies.items():
            self.transforms[name].add_tally(tally)
