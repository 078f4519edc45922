"""``[transforms.NAME] type = "cost"``: prices per model-name pattern and model-name aliases."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.configbase import Component


class Price(Component):
    """``[transforms.NAME.prices."PATTERN"]``: USD per million tokens for models matching PATTERN."""

    input: float = Field(ge=0, description="USD per million input (prompt) tokens.")
    output: float = Field(ge=0, description="USD per million output (completion) tokens.")
    flat: float | None = Field(
        None, ge=0, description="USD per million tokens when only a total `tokens` is known; default: input."
    )


class CostTransformConfig(Component):
    """``type = "cost"``: add ``cost_usd`` from token counts and a price table; normalise model names."""

    type: Literal["cost"]
    model_key: str = Field("model", description="Key holding the model name.")
    cost_key: str = Field("cost_usd", description="Key the cost is written to.")
    model_name_key: str = Field(
        "model_name", description="Key for the model's alias (its own name when no alias matches); empty: off."
    )
    aliases: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Alias → glob patterns of model names it stands for; metrics label only by these aliases.",
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="Glob pattern of a model name or alias → price; the first matching pattern wins.",
    )

    @model_validator(mode="after")
    def _aliases_are_labels(self) -> CostTransformConfig:
        for alias, patterns in self.aliases.items():
            if alias == "other" or not alias:
                raise ValueError(f"alias {alias!r}: 'other' and '' are reserved for unknown models")
            if not patterns:
                raise ValueError(f"aliases.{alias}: list at least one model-name pattern")
        return self
