"""The OpenSearch output's own parts: its keys, the AWS chain, and how client errors become the delivery's."""

from __future__ import annotations

from typing import Any

import pytest
from opensearchpy.exceptions import AuthenticationException, ConnectionError, ConnectionTimeout, TransportError
from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.outputs.bulk.delivery import HTTPFailure, NetworkFailure
from pipeline.outputs.opensearch.config import OpenSearchOutputConfig
from pipeline.outputs.opensearch.output import _failure
from pipeline.outputs.opensearch.sigv4 import aws_credentials


def config(**overrides: Any) -> OpenSearchOutputConfig:
    values: dict[str, Any] = {"type": "opensearch", "hosts": ["https://os:9200"], "index": "ai-%Y.%m.%d"}
    return OpenSearchOutputConfig(**{**values, **overrides})


def test_the_shared_bulk_keys_and_their_defaults() -> None:
    cfg = config()
    assert (cfg.op_type, cfg.id_key, cfg.bulk_max_bytes) == ("create", "request_id", 10 << 20)
    assert (cfg.effective_template_name, cfg.effective_template_pattern) == ("ai", "ai-*")
    assert "api_key" not in OpenSearchOutputConfig.model_fields


@pytest.mark.parametrize(("overrides", "message"), [
    ({"aws_sigv4": True, "username": "u", "password": "p"}, "either username and password or aws_sigv4"),
    ({"aws_sigv4": True, "hosts": ["http://os:9200"]}, "aws_sigv4 needs https"),
    ({"aws_region": "eu-west-1"}, "aws_region only apply with aws_sigv4 = true"),
    ({"aws_service": "aoss"}, "aws_service only apply with aws_sigv4"),
    ({"aws_sigv4": True, "aws_service": "lambda"}, "'es' or 'aoss'"),
    ({"password": "p"}, "a password needs a username"),
    ({"index": "AI-%Y"}, "must be lowercase"),
    ({"data_stream": True, "index": "logs-%Y"}, "no strftime placeholders"),
])
def test_config_mistakes_are_caught_at_load_time(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**overrides)


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An AWS chain with nothing in it: no keys, files, profile, region or instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_aws_credentials_come_from_the_chain_and_the_region_from_aws_region(no_aws: pytest.MonkeyPatch) -> None:
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKID")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    no_aws.setenv("AWS_REGION", "eu-west-1")
    credentials, region = aws_credentials("search", config(aws_sigv4=True))
    assert (credentials.access_key, region) == ("AKID", "eu-west-1")
    assert aws_credentials("search", config(aws_sigv4=True, aws_region="us-east-2"))[1] == "us-east-2"


def test_missing_aws_credentials_or_region_name_the_key(no_aws: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"outputs\.search\.aws_sigv4: no AWS credentials found"):
        aws_credentials("search", config(aws_sigv4=True, aws_region="eu-west-1"))
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKID")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(ConfigError, match=r"outputs\.search\.aws_region: not set"):
        aws_credentials("search", config(aws_sigv4=True))


@pytest.mark.parametrize(("error", "expected"), [
    # The security plugin's 401 comes as plain text.
    (AuthenticationException(401, "Unauthorized", None), HTTPFailure(401, "HTTP 401 error: Unauthorized")),
    # AWS's front answers a refused signature with {"message": ...}, not an OpenSearch error.
    (TransportError(403, '{"message":"The request signature we calculated does not match"}', None),
     HTTPFailure(403, "HTTP 403 error: The request signature we calculated does not match")),
    (TransportError(400, "mapper_parsing_exception",
                    {"error": {"type": "mapper_parsing_exception", "reason": "failed to parse [tokens]"}}),
     HTTPFailure(400, "HTTP 400 mapper_parsing_exception: failed to parse [tokens]")),
    (TransportError(413, "", None), HTTPFailure(413, "HTTP 413")),
    (ConnectionError("N/A", "refused", OSError("Connection refused")),
     NetworkFailure("ConnectionError: Connection refused")),
    (ConnectionTimeout("TIMEOUT", "timed out", TimeoutError()), NetworkFailure("ConnectionTimeout: ")),
])
def test_client_errors_become_http_or_network_failures(error: TransportError, expected: Exception) -> None:
    failure = _failure(error)
    assert type(failure) is type(expected) and failure.text == expected.text
    if isinstance(failure, HTTPFailure):
        assert isinstance(expected, HTTPFailure) and failure.status == expected.status
