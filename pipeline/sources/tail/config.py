"""``[sources.NAME] type = "tail"``: the tail source's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.configbase import MiB, SourceBase


class TailSourceConfig(SourceBase):
    """``[sources.NAME] type = "tail"``: follow files matching globs, one JSON object per line."""

    type: Literal["tail"]
    paths: list[str] = Field(min_length=1, description="Glob patterns of files to follow.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of files to skip.")
    format: Literal["json"] = Field("json", description="Line format: one JSON object per line.")
    read_from_head: bool = Field(
        True, description="At the very first start, read files already present from their beginning."
    )
    max_line_bytes: int = Field(16 * MiB, ge=1024, description="Longer lines go to the dead-letter store.")
    read_bytes: int = Field(1 * MiB, ge=4096, description="Bytes read from a file in one step.")
    rescan_interval: float = Field(5.0, gt=0, description="Seconds between glob rescans (notify fallback).")
    rotate_wait: float = Field(5.0, ge=0, description="Seconds to keep reading a rotated-away file.")
    max_open_files: int = Field(1024, ge=1, description="Upper bound on descriptors held open.")
    rotated_names: list[str] = Field(
        default_factory=list,
        description=(
            "More glob patterns naming a followed file's rotated generations, besides NAME.*, NAME-* and NAME_*; "
            "{name} is the file's name, {stem} the name without its last extension, {suffix} that extension "
            "(logrotate's `extension .log`: \"{stem}-*{suffix}\")."
        ),
    )
    olddir: list[str] = Field(
        default_factory=list,
        description="Directories logrotate's `olddir` moves rotated generations to (relative ones: from the file's "
        "directory).",
    )
