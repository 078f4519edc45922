"""The cost transform: token counts of each SDK shape, prices by pattern, aliases, bounded metric labels."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.runtime.metrics import render
from pipeline.transforms.cost.config import CostTransformConfig
from pipeline.transforms.cost.transform import CACHE_NAMES, CostTransform

ALIASES = {"gpt-4o": ["gpt-4o", "gpt-4o-20*"], "claude-sonnet": ["claude-sonnet-4*"]}
PRICES = {"gpt-4o": {"input": 2.0, "output": 8.0}, "claude-*": {"input": 3.0, "output": 15.0, "flat": 5.0}}


def cost(**config: Any) -> CostTransform:
    return CostTransform("cost", CostTransformConfig(type="cost", **{"aliases": ALIASES, "prices": PRICES, **config}))


def run(t: CostTransform, *records: dict[str, Any]) -> list[dict[str, Any]]:
    lines = [orjson.dumps(r) + b"\n" for r in records]
    out, _ = t.apply(lines, [dict(r) for r in records])
    return [orjson.loads(line) for line in out]


def test_openai_anthropic_top_level_and_flat_counts() -> None:
    openai, anthropic, top, flat = run(
        cost(),
        {"model": "gpt-4o-2024-08-06", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
        {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 2000, "output_tokens": 100}},
        {"model": "gpt-4o", "prompt_tokens": 10, "completion_tokens": 20, "tokens": 30},
        {"model": "claude-sonnet-4", "tokens": 1_000_000},
    )
    assert openai["cost_usd"] == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert anthropic["cost_usd"] == pytest.approx((2000 * 3.0 + 100 * 15.0) / 1e6)
    assert top["cost_usd"] == pytest.approx((10 * 2.0 + 20 * 8.0) / 1e6)
    assert flat["cost_usd"] == pytest.approx(5.0), "the flat price for a total alone"
    assert [r["model_name"] for r in (openai, anthropic, top, flat)] == ["gpt-4o", "claude-sonnet", "gpt-4o",
                                                                          "claude-sonnet"]


def test_the_line_is_spliced_not_reserialised() -> None:
    line = b'{"model": "gpt-4o",  "tokens" : 1000000}\n'
    out, _ = cost().apply([line], [orjson.loads(line)])
    assert out[0] == b'{"model": "gpt-4o",  "tokens" : 1000000,"model_name":"gpt-4o","cost_usd":2.0}\n'


def test_an_existing_key_is_replaced() -> None:
    (out,) = run(cost(), {"model": "gpt-4o", "tokens": 1_000_000, "cost_usd": "bogus"})
    assert out["cost_usd"] == 2.0 and list(out).count("cost_usd") == 1


def test_no_price_or_no_counts_means_no_cost() -> None:
    unknown, no_counts, bad_counts = run(cost(), {"model": "llama-3", "tokens": 10}, {"model": "gpt-4o"},
                                         {"model": "gpt-4o", "usage": {"prompt_tokens": "many"}})
    assert "cost_usd" not in unknown and unknown["model_name"] == "llama-3"
    assert "cost_usd" not in no_counts and "cost_usd" not in bad_counts


def test_stats_and_metrics_label_only_aliases_and_other() -> None:
    # Issue 23: a writer inventing a model name per record must not create a series per name.
    t = cost()
    names = [{"model": f"made-up-{n}", "tokens": 5} for n in range(20_000)]
    run(t, *names, {"model": "gpt-4o", "tokens": 1_000_000})
    stats = t.stats()
    assert set(stats["records"]) == {"gpt-4o", "claude-sonnet", "other"}
    assert stats["records"]["other"] == 20_000 and stats["cost_usd"]["gpt-4o"] == pytest.approx(2.0)
    assert t.lookup.cache_info().currsize <= CACHE_NAMES
    text = render(lambda: {"sources": {}, "outputs": {}, "healthy": True, "paused": False,
                           "transforms": {"cost": stats}}).decode()
    series = [line for line in text.splitlines() if line.startswith("logferry_transform_cost_records")]
    assert len(series) == 3 and not any("made-up" in line for line in text.splitlines())


def test_reserved_alias_names_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        CostTransformConfig(type="cost", aliases={"other": ["x*"]})
