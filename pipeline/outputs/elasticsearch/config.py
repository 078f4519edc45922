"""Config of the Elasticsearch output: the shared ``_bulk`` keys plus API keys.

Plain pydantic, no client import: the configuration validates even where the
``elasticsearch`` package is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from pipeline.outputs.bulk.config import (
    BulkIndexConfig,
    index_name_problem,
    template_name_for,
    template_pattern_for,
    without_credentials,
)

__all__ = [
    "ElasticsearchOutputConfig",
    "index_name_problem",
    "template_name_for",
    "template_pattern_for",
    "without_credentials",
]


class ElasticsearchOutputConfig(BulkIndexConfig):
    """``type = "elasticsearch"``: bulk indexing with deterministic ids, exactly-once results."""

    type: Literal["elasticsearch"]
    api_key: SecretStr | None = Field(None, description="Base64 'id:key' API key; prefer the environment.")
    api_key_file: Path | None = None

    @model_validator(mode="after")
    def _api_key_is_consistent(self) -> ElasticsearchOutputConfig:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        if self.username and (self.api_key is not None or self.api_key_file is not None):
            raise ValueError("use either username and password or an API key, not both")
        return self
