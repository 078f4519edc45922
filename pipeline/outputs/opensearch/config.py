"""Config of the OpenSearch output: the shared ``_bulk`` keys plus AWS SigV4 signing.

Plain pydantic, no client import: the configuration validates even where ``opensearch-py``
is not installed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.outputs.bulk.config import BulkIndexConfig


class OpenSearchOutputConfig(BulkIndexConfig):
    """``type = "opensearch"``: bulk indexing with deterministic ids, exactly-once results."""

    type: Literal["opensearch"]
    aws_sigv4: bool = Field(
        False, description="Sign requests with AWS SigV4 (Amazon OpenSearch Service or Serverless), "
        "credentials from the standard AWS chain.",
    )  # fmt: skip
    aws_service: Literal["es", "aoss"] = Field(
        "es", description='"es": an OpenSearch Service domain; "aoss": an OpenSearch Serverless collection.'
    )
    aws_region: str | None = Field(None, description="Region to sign for; default: the AWS chain's (AWS_REGION).")
    aws_profile: str | None = Field(None, description="Profile of the AWS config files; default: the chain's.")

    @model_validator(mode="after")
    def _aws_is_consistent(self) -> OpenSearchOutputConfig:
        if self.aws_sigv4 and self.username:
            raise ValueError("use either username and password or aws_sigv4, not both")
        if self.aws_sigv4 and not self.uses_tls:
            raise ValueError("aws_sigv4 needs https:// hosts (Amazon OpenSearch endpoints are HTTPS)")
        unused = [key for key in ("aws_region", "aws_profile") if getattr(self, key) is not None]
        if self.aws_service != "es":
            unused.append("aws_service")
        if unused and not self.aws_sigv4:
            raise ValueError(f"{', '.join(unused)} only apply with aws_sigv4 = true")
        return self
