"""Config of the file output."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.configbase import OutputBase


class FileOutputConfig(OutputBase):
    """``type = "file"``: JSON Lines on local disk, one file per time window."""

    type: Literal["file"]
    path: str = Field(description="File path; strftime placeholders take the chunk's time key (UTC).")
    compress: Literal["none", "gzip"] = Field("none", description="gzip appends one member per chunk.")
