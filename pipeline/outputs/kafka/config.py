"""Config of the kafka output, and the connection keys every Kafka component shares."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from pipeline.configbase import Component, OutputBase


class KafkaConnection(Component):
    """The keys of a Kafka connection (a mixin of the kafka component configs)."""

    brokers: list[str] = Field(min_length=1, description="Bootstrap brokers, host:port.")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(
        None, description="CA certificate(s) (PEM) to verify the brokers; default: the system's."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL authentication; needs username and a password."
    )
    username: str | None = None
    password: SecretStr | None = Field(None, description="Prefer LOGFERRY_OUTPUTS__NAME__PASSWORD or password_file.")
    password_file: Path | None = Field(None, description="File holding the password.")

    @model_validator(mode="after")
    def _security_is_consistent(self) -> Self:
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file is set but tls is false")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        has_password = self.password is not None or self.password_file is not None
        if self.sasl_mechanism is not None and not (self.username and has_password):
            raise ValueError(
                "sasl_mechanism needs username and a password (password, password_file or the environment)"
            )
        if self.sasl_mechanism is None and (self.username or has_password):
            raise ValueError("username or password set without sasl_mechanism")
        return self



class KafkaOutputConfig(OutputBase, KafkaConnection):
    """``type = "kafka"``: each chunk produced in one Kafka transaction, exactly once across crashes.

    acks=all and idempotence are always on: transactions need both. The connection keys
    (brokers, TLS, SASL) are :class:`KafkaConnection`'s.
    """

    type: Literal["kafka"]
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
