"""AWS SigV4 for Amazon OpenSearch Service (``es``) and OpenSearch Serverless (``aoss``).

Credentials come from botocore's standard chain (environment, ``AWS_PROFILE``/``aws_profile``,
the shared files, web identity, ECS and EC2 instance roles). Temporary ones arrive as
botocore ``RefreshableCredentials``: opensearch-py's signer takes a frozen copy for every
request, and botocore renews them shortly before they expire, so a long-running daemon
keeps signing with valid keys.
"""

from __future__ import annotations

import os
from typing import Any

import botocore.session
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError
from opensearchpy import AWSV4SignerAsyncAuth

from pipeline.errors import ConfigError
from pipeline.outputs.bulk.payload import BulkPayload
from pipeline.outputs.opensearch.config import OpenSearchOutputConfig


def aws_credentials(name: str, config: OpenSearchOutputConfig) -> tuple[Credentials, str]:
    """The credentials and region to sign with; ConfigError naming the key if either is missing.

    Blocking (the chain may ask the instance metadata service): called once, while the output is built.
    """
    try:
        session = botocore.session.Session(profile=config.aws_profile)
        credentials = session.get_credentials()
        # botocore itself reads AWS_DEFAULT_REGION and the profile; the other SDKs' AWS_REGION comes first.
        region = config.aws_region or os.environ.get("AWS_REGION") or session.get_config_variable("region")
    except BotoCoreError as exc:
        raise ConfigError(f"outputs.{name}.aws_profile: {exc}") from exc
    if credentials is None:
        raise ConfigError(
            f"outputs.{name}.aws_sigv4: no AWS credentials found (environment, shared files, "
            "web identity, container or instance role)"
        )
    if not region:
        raise ConfigError(f"outputs.{name}.aws_region: not set, and neither AWS_REGION nor the AWS chain has one")
    return credentials, region


class Signer:
    """opensearch-py's SigV4 signer, given the bytes of a :class:`BulkPayload` body to hash."""

    def __init__(self, credentials: Credentials, region: str, service: str) -> None:
        self.signer = AWSV4SignerAsyncAuth(credentials, region, service)

    def __call__(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """The headers to add: ``Authorization``, ``X-Amz-Date``, ``X-Amz-Content-SHA256`` (and the token)."""
        data = body.body if isinstance(body, BulkPayload) else body
        return self.signer(method, url, data, headers)


def signer(name: str, config: OpenSearchOutputConfig) -> Signer:
    """The per-request signer for this output's ``aws_service``."""
    credentials, region = aws_credentials(name, config)
    return Signer(credentials, region, config.aws_service)
