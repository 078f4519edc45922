"""``[sources.NAME] type = "kafka"``: the kafka source's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.configbase import MiB, SourceBase
from pipeline.outputs.kafka.config import KafkaConnection


class KafkaSourceConfig(SourceBase, KafkaConnection):
    """``[sources.NAME] type = "kafka"``: consume topics in a consumer group, one JSON object per message.

    The connection keys (brokers, TLS, SASL) are the kafka output's (:class:`KafkaConnection`);
    the password may also come from ``LOGFERRY_SOURCES__NAME__PASSWORD``.
    """

    type: Literal["kafka"]
    topics: list[str] = Field(min_length=1, description="Topics to consume (they must exist).")
    group_id: str = Field(min_length=1, description="Consumer group: processes with the same group share partitions.")
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a partition the group has never committed starts."
    )
    max_batch_messages: int = Field(
        1000, ge=1, description="Messages taken from the consumer in one step (all held in memory at once)."
    )
    max_batch_bytes: int = Field(1 * MiB, ge=4096, description="Bytes of messages per batch handed to the pipeline.")
    session_timeout: float = Field(
        45.0, ge=6, le=300,
        description="Seconds without a heartbeat before the group gives this process's partitions to the others.",
    )
    instance_id: str | None = Field(
        None, max_length=249, pattern=r"^[A-Za-z0-9._-]*$",
        description="Static group membership (group.instance.id); default logferry-<hostname>-<source>-<hash of "
                    "state_dir>; \"\" for dynamic membership.",
    )

    @field_validator("instance_id")
    @classmethod
    def _instance_id_is_legal(cls, value: str | None) -> str | None:
        # Kafka's own consumer refuses an id that is not a legal topic name (JoinGroupRequest.validateGroupInstanceId:
        # at most 249 of [A-Za-z0-9._-], not "." or ".."); librdkafka sends anything, so we check it here.
        if value in (".", ".."):
            raise ValueError(f"instance_id {value!r} is not a legal group.instance.id")
        return value
