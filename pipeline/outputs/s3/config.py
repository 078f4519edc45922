"""Config of the S3 output."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.configbase import OutputBase


class S3OutputConfig(OutputBase):
    """``type = "s3"``: one object per chunk (delivery arrives with its own issue)."""

    type: Literal["s3"]
    bucket: str
    region: str = "us-east-1"
    path: str = Field("", description="Key prefix; strftime placeholders take the chunk's time key.")
    endpoint_url: str | None = None
    store_as: Literal["json", "gzip", "zstd"] = "gzip"
