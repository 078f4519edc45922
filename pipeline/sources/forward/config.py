"""``[sources.NAME] type = "forward"``: the forward source's settings."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.configbase import MiB, SourceBase


class ForwardSourceConfig(SourceBase):
    """``[sources.NAME] type = "forward"``: receive from fluent-logger, Fluentd and Fluent Bit (in_forward)."""

    type: Literal["forward"]
    tag: str = Field("", description="Empty: records keep the tag their client sent; else this tag replaces it.")
    bind: str = Field("127.0.0.1", description="Address to listen on (TCP, and UDP for heartbeats).")
    port: int = Field(24224, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    shared_key: str = Field("", description="Require the HELO/PING/PONG handshake with this key; empty: off.")
    self_hostname: str = Field("logferry", description="Host name this server gives in the handshake.")
    tls_cert: Path | None = Field(None, description="PEM certificate: serve TLS (with tls_key).")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    heartbeat: bool = Field(True, description="Answer UDP heartbeats on the same port (out_forward's udp).")
    message_limit_bytes: int = Field(32 * MiB, ge=1024, description="A larger message closes its connection.")
    chunk_limit_bytes: int = Field(
        64 * MiB, ge=1024, description="A chunk larger than this once decompressed closes its connection."
    )
    max_connections: int = Field(1024, ge=1, description="Connections beyond this are closed at once.")
    chunk_window: float = Field(
        600.0, gt=0, description="Seconds a committed chunk id is remembered, so a resend is acked, not stored."
    )
    chunk_window_max: int = Field(
        10_000, ge=1, description="At most this many chunk ids remembered (the oldest are forgotten first)."
    )
    keepalive_timeout: float = Field(600.0, gt=0, description="Close a connection idle this long, seconds.")

    @model_validator(mode="after")
    def _tls_pair(self) -> ForwardSourceConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    def routes_by_record_tag(self) -> bool:
        """Whether each batch is routed by its own tag (the client's) rather than this source's."""
        return not self.tag

    def exposure_warning(self) -> str | None:
        """Why listening here is risky (a non-loopback address without TLS or shared_key), or None."""
        if self.tls_cert is not None or self.shared_key:
            return None
        try:
            loopback = ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            loopback = self.bind == "localhost"
        if loopback:
            return None
        return (f"bind = {self.bind!r}: anyone who reaches port {self.port} can send records; "
                "set shared_key or tls_cert/tls_key, or bind to 127.0.0.1")
