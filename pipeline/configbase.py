"""Config building blocks shared by every component: frozen models, buffer settings, output keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.runtime.routing import check_pattern

MiB = 1024 * 1024


class Component(BaseModel):
    """Base of every config table: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class BufferConfig(Component):
    """``[outputs.NAME.buffer]``: time-keyed file chunks, flushing, limits and retries."""

    timekey: int = Field(3600, ge=1, description="Width of each chunk's time window, seconds.")
    timekey_wait: float = Field(60.0, ge=0, description="Grace period for late events after a window ends.")
    flush_mode: Literal["interval", "lazy"] = Field(
        "interval", description="interval: flush every flush_interval; lazy: only when a window closes."
    )
    flush_interval: float = Field(5.0, gt=0, description="Seconds a staged chunk may wait (interval mode).")
    chunk_limit_bytes: int = Field(8 * MiB, ge=1024, description="A chunk is enqueued at this size.")
    chunk_limit_records: int = Field(100_000, ge=1, description="A chunk is enqueued at this many records.")
    total_limit_bytes: int = Field(512 * MiB, ge=64 * 1024, description="All chunks of this output, at most.")
    overflow_action: Literal["block", "drop_oldest_chunk"] = Field(
        "block", description="When full: block pauses the sources; drop_oldest_chunk drops and logs."
    )
    retry_wait: float = Field(1.0, gt=0, description="First retry delay, seconds.")
    retry_max_interval: float = Field(300.0, gt=0, description="Longest delay between retries.")
    retry_limit: int = Field(20, ge=0, description="Attempts before a chunk goes to dead letters.")
    retry_timeout: float = Field(72 * 3600.0, gt=0, description="Give up a chunk after this many seconds.")
    retry_randomize: bool = Field(True, description="Add jitter to retry delays.")
    workers: int = Field(1, ge=1, le=64, description="Chunks delivered concurrently.")


class SourceBase(Component):
    """Keys every source has."""

    tag: str = Field(description="Tag given to every record of this source; outputs match on it.")
    transforms: list[str] = Field(
        default_factory=list, description="Names of [transforms.NAME] applied, in order, to every record read."
    )

    def routes_by_record_tag(self) -> bool:
        """Whether each batch is routed by its own tag (a network source's client tag), not ``tag``."""
        return False

    def exposure_warning(self) -> str | None:
        """Why this source's settings expose it to the network unprotected, or None (checked and logged)."""
        return None


class OutputBase(Component):
    """Keys every output has."""

    match: list[str] = Field(default_factory=lambda: ["**"], description="Tag patterns this output takes.")
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    transforms: list[str] = Field(
        default_factory=list, description="Names of [transforms.NAME] applied, in order, to this output's records."
    )

    @field_validator("match")
    @classmethod
    def _patterns_are_well_formed(cls, value: list[str]) -> list[str]:
        return [check_pattern(pattern) for pattern in value]
