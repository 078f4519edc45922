"""Config of the Elasticsearch output."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from pipeline.configbase import OutputBase


class ElasticsearchOutputConfig(OutputBase):
    """``type = "elasticsearch"``: bulk indexing (delivery arrives with its own issue)."""

    type: Literal["elasticsearch"]
    hosts: list[str] = Field(min_length=1, description="Cluster URLs.")
    index: str = Field(description="Index name; strftime placeholders take each record's event time.")
    username: str | None = None
    password: SecretStr | None = Field(None, description="Prefer LOGFERRY_OUTPUTS__NAME__PASSWORD.")
    password_file: Path | None = Field(None, description="File holding the password.")
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    ca_file: Path | None = None
    verify_certs: bool = True
    request_timeout: float = Field(30.0, gt=0)
    op_type: Literal["create", "index"] = "create"
    id_key: str = Field("request_id", description="Field used as document id; a hash of source+offset if absent.")
