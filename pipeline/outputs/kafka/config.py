"""Config of the kafka output."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.configbase import OutputBase


class KafkaOutputConfig(OutputBase):
    """``type = "kafka"``: each chunk produced in one Kafka transaction, exactly once across crashes.

    acks=all and idempotence are always on: transactions need both.
    """

    type: Literal["kafka"]
    brokers: list[str] = Field(min_length=1, description="Bootstrap brokers, host:port.")
    topic: str = Field(min_length=1, description="Topic the records go to (it must exist).")
    key_field: str | None = Field(
        None, description="Record field used as the message key (one session stays ordered in one partition)."
    )
    compression: Literal["zstd", "lz4", "gzip", "none"] = Field("zstd", description="Compression of record batches.")
    id_key: str = Field("request_id", description="Field used as the record's id; a hash of source+offset if absent.")
    time_key: str = Field("timestamp", description="Event time field, part of the hashed id.")
    id_header: str = Field("logferry.id", min_length=1, description="Header carrying each record's id.")
    state_topic: str = Field(
        "logferry-state", min_length=1,
        description="Compacted topic of chunk markers, written in each chunk's transaction (created if missing).",
    )
    transactional_id: str | None = Field(
        None, description="Stable per host and output; default logferry-<hostname>-<output name>."
    )
    transaction_timeout: float = Field(60.0, ge=1, le=900, description="Seconds a transaction may stay open.")
    request_timeout: float = Field(30.0, gt=0, description="Seconds to wait for the brokers at start and commit.")
