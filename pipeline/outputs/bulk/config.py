"""Keys every ``_bulk``-API output has (Elasticsearch, OpenSearch), and the index name helpers.

Plain pydantic, no client import: the configuration validates without any client installed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from pipeline.configbase import MiB, OutputBase
from pipeline.errors import ConfigError

_PLACEHOLDER = re.compile(r"%[-_0^#]?[A-Za-z%]")
_STAR_RUN = re.compile(r"\*[^A-Za-z0-9*]*\*")
_SEPARATOR_RUN = re.compile(r"[-_.+]{2,}")
_INDEX_FORBIDDEN = set('\\/*?"<>| ,#:')
_SAMPLE_TIMES = (0, 1_795_000_000)


def template_pattern_for(index: str) -> str:
    """The index pattern matching every name ``index`` can expand to.

    >>> template_pattern_for("ai-interactions-%Y.%m.%d")
    'ai-interactions-*'
    >>> template_pattern_for("logs-%Y-%m-app"), template_pattern_for("fixed")
    ('logs-*-app', 'fixed')
    """
    pattern = _PLACEHOLDER.sub("*", index)
    while (collapsed := _STAR_RUN.sub("*", pattern)) != pattern:
        pattern = collapsed
    return pattern


def template_name_for(index: str) -> str:
    """A template name from the fixed part of ``index``.

    >>> template_name_for("ai-interactions-%Y.%m.%d"), template_name_for("logs-%Y-%m-app"), template_name_for("%Y")
    ('ai-interactions', 'logs-app', 'logferry')
    """
    fixed = _SEPARATOR_RUN.sub(lambda m: m.group(0)[0], _PLACEHOLDER.sub("", index))
    return fixed.strip("-_.+") or "logferry"


def without_credentials(url: str) -> str:
    """A host URL fit for logs: ``user:password@`` left out.

    >>> without_credentials("https://elastic:s3cret@es1:9200/"), without_credentials("http://es2:9200")
    ('https://es1:9200/', 'http://es2:9200')
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def index_name_problem(name: str) -> str | None:
    """Why Elasticsearch or OpenSearch would refuse ``name`` as an index name, or None.

    >>> index_name_problem("ai-2026.11.18"), index_name_problem("Nov-18")
    (None, 'must be lowercase')
    """
    if not name or name in (".", ".."):
        return "must not be empty, '.' or '..'"
    if name != name.lower():
        return "must be lowercase"
    if bad := sorted(_INDEX_FORBIDDEN & set(name)):
        return f"must not contain {''.join(bad)!r}"
    if name[0] in "-_+":
        return "must not start with '-', '_' or '+'"
    if len(name.encode()) > 255:
        return "must be at most 255 bytes"
    return None


class BulkIndexConfig(OutputBase):
    """Keys shared by the outputs that index with ``_bulk``; each adds its ``type`` and its own auth keys."""

    hosts: list[str] = Field(min_length=1, description="Cluster URLs.")
    index: str = Field(description="Index name; strftime placeholders take each record's event time (UTC).")
    username: str | None = None
    password: SecretStr | None = Field(None, description="Prefer LOGFERRY_OUTPUTS__NAME__PASSWORD.")
    password_file: Path | None = Field(None, description="File holding the password.")
    ca_file: Path | None = Field(None, description="CA certificate(s) to verify the cluster's TLS certificate.")
    verify_certs: bool = True
    http_compress: bool = Field(False, description="gzip request bodies (less network, more CPU).")
    request_timeout: float = Field(30.0, gt=0)
    op_type: Literal["create", "index"] = Field(
        "create", description="create: a document already there (same id) counts as delivered; index: overwrite."
    )
    data_stream: bool = Field(
        False, description="index names a data stream: create only, @timestamp added from the event time."
    )
    id_key: str = Field("request_id", description="Field used as document id; a hash of source+offset if absent.")
    time_key: str = Field("timestamp", description="Event time (epoch seconds or ISO-8601) naming the index.")
    bulk_max_bytes: int = Field(10 * MiB, ge=1024, description="Largest bulk request body.")
    bulk_max_docs: int = Field(5000, ge=1, description="Most documents in one bulk request.")
    bulk_concurrency: int = Field(1, ge=1, le=64, description="Bulk requests in flight per chunk.")
    bulk_item_retries: int = Field(
        3, ge=0, description="Resends of documents refused with 429/5xx within one delivery attempt."
    )
    bulk_item_retry_wait: float = Field(0.5, ge=0, description="First wait before such a resend, seconds.")
    install_template: bool = Field(True, description="Install the index template at start.")
    template_name: str | None = Field(None, description="Default: the fixed part of the index name.")
    template_pattern: str | None = Field(None, description="Default: the index with placeholders as '*'.")
    template_priority: int = Field(200, ge=0)

    @field_validator("index")
    @classmethod
    def _index_is_valid(cls, value: str) -> str:
        for sample in _SAMPLE_TIMES:
            problem = index_name_problem(time.strftime(value, time.gmtime(sample)))
            if problem:
                raise ValueError(f"index {value!r} {problem} once its placeholders are filled")
        return value

    @model_validator(mode="after")
    def _data_stream_is_consistent(self) -> Self:
        if self.data_stream and self.op_type != "create":
            raise ValueError('data streams only take op_type = "create"')
        if self.data_stream and "%" in self.index:
            raise ValueError("a data stream's name has no strftime placeholders (the cluster rolls it over)")
        return self

    @model_validator(mode="after")
    def _password_is_consistent(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        has_password = self.password is not None or self.password_file is not None
        if has_password and not self.username:
            raise ValueError("a password needs a username")
        if self.username and not has_password:
            raise ValueError("username is set but no password (password, password_file or the environment)")
        if self.ca_file is not None and not all(h.lower().startswith("https://") for h in self.hosts):
            raise ValueError("ca_file needs https:// hosts")
        return self

    @property
    def uses_tls(self) -> bool:
        """Some host is reached over https."""
        return any(host.lower().startswith("https://") for host in self.hosts)

    @property
    def hosts_for_logs(self) -> str:
        """The hosts, comma-separated, without any credentials written into them."""
        return ", ".join(without_credentials(host) for host in self.hosts)

    @property
    def effective_template_name(self) -> str:
        """``template_name`` or its default."""
        return self.template_name or template_name_for(self.index)

    @property
    def effective_template_pattern(self) -> str:
        """``template_pattern`` or its default."""
        return self.template_pattern or template_pattern_for(self.index)


def tls_options(name: str, config: BulkIndexConfig) -> dict[str, Any]:
    """The TLS keyword arguments both clients take (``ca_certs``, ``verify_certs``, ``ssl_show_warn``);
    ConfigError naming ``outputs.NAME.ca_file`` if that file cannot be read."""
    tls: dict[str, Any] = {}
    if config.ca_file is not None:
        if not config.ca_file.is_file():
            raise ConfigError(f"outputs.{name}.ca_file: {config.ca_file} is not a readable file")
        tls["ca_certs"] = str(config.ca_file)
    if config.uses_tls:
        tls["verify_certs"] = config.verify_certs
        tls["ssl_show_warn"] = False  # logged once at start instead of a warning per request
    return tls
