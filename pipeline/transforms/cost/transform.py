"""CostTransform: ``cost_usd`` from a record's token counts and the configured prices; model aliases.

Token counts are looked for in this order: OpenAI-style ``usage.prompt_tokens`` /
``usage.completion_tokens``, Anthropic-style ``usage.input_tokens`` / ``usage.output_tokens``,
the same keys at the top level (as :mod:`pipeline.client` writes them), then a flat ``tokens``
(or ``usage.total_tokens``) priced at the ``flat`` price. No price is built in: a model whose
name matches no pattern of ``prices`` gets no cost (counted as unpriced).

Metrics are labelled by alias only, every other model name by ``other``: a writer logging a
million distinct model names adds one series, not a million (issue 23).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.transforms.base import Records

if TYPE_CHECKING:  # a parse worker gets a CostSpec: it loads neither pydantic nor the config models
    from pipeline.transforms.cost.config import CostTransformConfig

OTHER = "other"
CACHE_NAMES = 4096  # distinct model names remembered; bounded, however many a writer invents


@dataclass(frozen=True, slots=True)
class PriceSpec:
    """USD per million input, output and (when only a total is known) flat tokens."""

    input: float
    output: float
    flat: float | None = None


@dataclass(frozen=True, slots=True)
class CostSpec:
    """What a cost transform is built from: its config reduced to plain values.

    A parse worker gets this (pickled) rather than the config: it then loads neither pydantic nor the
    config models, ~13 MB less resident per worker (as :class:`~pipeline.transforms.redact.transform.RedactSpec`).
    """

    model_key: str
    cost_key: str
    model_name_key: str
    aliases: tuple[tuple[str, tuple[str, ...]], ...]  # alias → its model-name patterns, in the config's order
    prices: tuple[tuple[str, PriceSpec], ...]  # pattern → price, in the config's order (the first match wins)

    @classmethod
    def of(cls, config: CostTransformConfig) -> CostSpec:
        """The spec of ``config``."""
        return cls(config.model_key, config.cost_key, config.model_name_key,
                   tuple((alias, tuple(patterns)) for alias, patterns in config.aliases.items()),
                   tuple((pattern, PriceSpec(p.input, p.output, p.flat)) for pattern, p in config.prices.items()))


class CostTransform:
    """``type = "cost"``: adds ``cost_usd`` (and the model's alias) to each record."""

    def __init__(self, name: str, config: CostTransformConfig | CostSpec) -> None:
        """Built from its config, or from the spec a parse worker is given."""
        self.name = name
        self.spec = spec = config if isinstance(config, CostSpec) else CostSpec.of(config)
        self.lookup = lru_cache(maxsize=CACHE_NAMES)(self._lookup)
        keys = [spec.cost_key, *([spec.model_name_key] if spec.model_name_key else [])]
        self.needles = [orjson.dumps(key) + b":" for key in keys]
        self.records: Counter[str] = Counter()
        self.unpriced: Counter[str] = Counter()
        self.cost_usd: dict[str, float] = {}

    def take_tally(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        """(records, unpriced, USD) per alias since the last take; reset."""
        tally = (dict(self.records), dict(self.unpriced), self.cost_usd)
        self.records, self.unpriced, self.cost_usd = Counter(), Counter(), {}
        return tally

    def add_tally(self, tally: tuple[dict[str, int], dict[str, int], dict[str, float]]) -> None:
        """Add a worker's :meth:`take_tally`."""
        self.records.update(tally[0])
        self.unpriced.update(tally[1])
        for label, usd in tally[2].items():
            self.cost_usd[label] = self.cost_usd.get(label, 0.0) + usd

    def __reduce__(self) -> tuple[type[CostTransform], tuple[str, CostSpec]]:
        return CostTransform, (self.name, self.spec)  # into a parse worker: the name cache is rebuilt there

    def _lookup(self, model: str) -> tuple[str | None, PriceSpec | None]:
        """The alias ``model`` falls under (None: none) and the price of the first matching pattern."""
        alias = next((a for a, patterns in self.spec.aliases if any(fnmatchcase(model, p) for p in patterns)), None)
        names = [model] if alias is None else [alias, model]
        price = next((p for pattern, p in self.spec.prices if any(fnmatchcase(n, pattern) for n in names)), None)
        return alias, price

    def apply(self, lines: list[bytes], records: Records) -> tuple[list[bytes], Records]:
        """Every record with its cost and alias added; lines are spliced, not re-serialised."""
        out_lines = list(lines)
        out_records = list(records)
        for i, record in enumerate(records):
            added = self._fields(record)
            if added:
                out_lines[i] = self._add(lines[i], added)
                out_records[i] = {**record, **added}
        return out_lines, out_records

    def _fields(self, record: dict[str, Any]) -> dict[str, Any]:
        model = record.get(self.spec.model_key)
        name = model if isinstance(model, str) else ""
        alias, price = self.lookup(name) if name else (None, None)
        label = alias or OTHER
        self.records[label] += 1
        added: dict[str, Any] = {}
        if self.spec.model_name_key and name:
            added[self.spec.model_name_key] = alias or name
        cost = _cost(record, price) if price is not None else None
        if cost is None:
            self.unpriced[label] += 1
        else:
            added[self.spec.cost_key] = cost
            self.cost_usd[label] = self.cost_usd.get(label, 0.0) + cost
        return added

    def _add(self, line: bytes, added: dict[str, Any]) -> bytes:
        spliceable = line.endswith(b"}\n") and line[:-2].rstrip()[-1:] != b"{"  # not an empty object
        if spliceable and not any(n in line for n in self.needles):
            return line[:-2] + b"," + orjson.dumps(added)[1:] + b"\n"
        record = orjson.loads(line)  # a key already there (or an odd line): the added value wins
        record.update(added)
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)

    def dead_letter(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Dead letters carry no cost."""
        return entry

    def stats(self) -> dict[str, Any]:
        """Records, unpriced records and USD per alias (``other`` for every name without one)."""
        labels = [*(alias for alias, _ in self.spec.aliases), OTHER]
        return {"type": "cost", "records": {a: self.records[a] for a in labels},
                "unpriced": {a: self.unpriced[a] for a in labels},
                "cost_usd": {a: round(self.cost_usd.get(a, 0.0), 6) for a in labels}}


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def tokens(record: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    """(input, output, flat) token counts of a record, each None when absent or not a count.

    >>> tokens({"usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    (10, 5, None)
    >>> tokens({"usage": {"input_tokens": 7, "output_tokens": 3}}), tokens({"tokens": 42})
    ((7, 3, None), (None, None, 42))
    """
    usage = record.get("usage")
    for where in ((usage,) if isinstance(usage, dict) else ()) + (record,):
        for pin, pout in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
            tin, tout = _count(where.get(pin)), _count(where.get(pout))
            if tin is not None or tout is not None:
                return tin, tout, None
    flat = _count(record.get("tokens"))
    if flat is None and isinstance(usage, dict):
        flat = _count(usage.get("total_tokens"))
    return None, None, flat


def _cost(record: dict[str, Any], price: PriceSpec) -> float | None:
    tin, tout, flat = tokens(record)
    if tin is None and tout is None:
        if flat is None:
            return None
        return round(flat * (price.input if price.flat is None else price.flat) / 1e6, 8)
    return round(((tin or 0) * price.input + (tout or 0) * price.output) / 1e6, 8)
