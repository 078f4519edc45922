"""Output plugins (``<match>`` or ``<store>`` bodies) → ``[outputs.NAME]`` tables, one handler per type.

Adding a type is one entry in :data:`OUTPUTS`: the function writing its table, the name
it gets when it has no ``@id``, and its Fluentd buffer defaults. Secrets never reach the
table: a password becomes ``password_file`` plus an instruction in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.importer import values
from pipeline.importer.buffer import BufferDefaults, BufferResult
from pipeline.importer.context import Context, Reader
from pipeline.importer.fluentd_conf import Directive

SECRETS_DIR = "/etc/logferry"


@dataclass
class Built:
    """An output's table (without match and buffer), and the record fields it asked of ``[enrich]``."""

    table: dict[str, Any]
    tag_key: str | None = None
    finish: Callable[[BufferResult], None] | None = None  # completes the table once the buffer is known


Handler = Callable[[Directive, Reader, Context, str], Built | None]


@dataclass(frozen=True)
class OutputType:
    """How one Fluentd output type is translated."""

    handler: Handler
    default_name: str
    buffer: BufferDefaults
    ignored: frozenset[str] = frozenset()
    sections: frozenset[str] = frozenset({"buffer", "format"})


def secret_file(reader: Reader, ctx: Context, name: str, key: str, ours: str, what: str) -> str | None:
    """``ours``'s file path when the directive sets secret ``key`` (reported, never copied)."""
    param = reader.param(key)
    if param is None:
        return None
    path = f"{SECRETS_DIR}/{name}-{ours.removesuffix('_file').replace('_', '-')}"
    origin = f" (td-agent read it from ${variable})" if (variable := param.env) else ""
    ctx.add("secret", param.where, f"{key} (not copied)",
            f"write the {what} to {path} (readable by the logferry user only){origin}, or delete `{ours}` and "
            f"set LOGFERRY_OUTPUTS__{name.upper()}__{ours.removesuffix('_file').upper()} in the service's environment")
    return path


# -- elasticsearch ---------------------------------------------------------------------------------

ES_IGNORED = frozenset({
    "http_backend", "reload_connections", "reload_on_failure", "reconnect_on_error", "log_es_400_reason",
    "suppress_type_name", "type_name", "ssl_version", "sniffer_class_name", "bulk_message_request_threshold",
    "default_elasticsearch_version", "verify_es_version_at_startup", "with_transporter_log", "prefer_oj_serializer",
    "emit_error_for_missing_id", "validate_client_version", "exception_backup", "resurrect_after",
    "fail_on_putting_template_retry_exceed", "max_retry_putting_template", "utc_index", "logstash_prefix_separator",
})
_ES_WHERE = frozenset({"host", "hosts", "port", "scheme", "path", "index_name", "logstash_prefix",
                       "logstash_dateformat"})
_ES_TEMPLATES = ("template_name", "template_file", "templates", "customize_template", "template_overwrite",
                 "enable_ilm", "ilm_policy_id", "ilm_policy", "index_date_pattern", "rollover_index")


def elasticsearch(directive: Directive, reader: Reader, ctx: Context, name: str) -> Built | None:
    """out_elasticsearch: hosts, index (or logstash_format), credentials, ids and time key."""
    return _bulk("elasticsearch", directive, reader, ctx, name)


def _bulk(kind: str, directive: Directive, reader: Reader, ctx: Context, name: str,
          signed: bool = False) -> Built | None:
    """The keys out_elasticsearch and out_opensearch share, as the ``_bulk`` outputs' table (``signed``:
    requests are signed with AWS SigV4, so there is no user and password)."""
    computed = [p for p in directive.params if p.ruby and p.key in _ES_WHERE]
    if computed:
        reader.read.update(p.key for p in directive.params)
        ctx.add("refused", computed[0].where, f"{computed[0].key} {computed[0].value}",
                "where to write is computed by Ruby in Fluentd: write the value it yields by hand; output left out")
        return None
    table: dict[str, Any] = {"type": kind, "hosts": _es_hosts(reader, ctx)}
    index = _es_index(directive, reader, ctx)
    if index is None:
        return None
    table["index"] = index
    if not signed:
        _es_credentials(table, reader, ctx, name)
    reader.put(table, "ca_file", str, "ca_file")
    verify = reader.get(values.boolean, "ssl_verify")
    if verify is False:
        table["verify_certs"] = False
    reader.put(table, "id_key", str, "id_key")
    reader.put(table, "time_key", str, "time_key")
    reader.put(table, "request_timeout", values.seconds, "request_timeout")
    _es_operation(table, reader, ctx)
    compression = reader.text("compression_level")
    if compression not in (None, "no_compression"):
        table["http_compress"] = True
    for key in _ES_TEMPLATES:
        if (param := reader.param(key)) is not None:
            ctx.add("approximated", param.where, f"{param.key} {param.value}",
                    "logferry installs its own index template for interaction records (install_template); "
                    "this one is not installed")
    tag_key = (reader.text("tag_key") or "tag") if reader.get(values.boolean, "include_tag_key") else None
    reader.param("tag_key")  # without include_tag_key it means nothing: read, not reported
    return Built(table, tag_key)


def _es_hosts(reader: Reader, ctx: Context) -> list[str]:
    scheme = reader.text("scheme") or "http"
    prefix = (reader.text("path") or "").rstrip("/")
    listed = reader.get(values.string_list, "hosts")
    if not listed:
        host, port = reader.text("host") or "localhost", reader.get(int, "port") or 9200
        return [f"{scheme}://{host}:{port}{prefix}"]
    hosts = []
    for item in listed:
        url = item if "://" in item else f"{scheme}://{item}"
        parts = urlsplit(url)
        if parts.username or parts.password:
            param = reader.param("hosts")
            assert param is not None
            ctx.add("secret", param.where, "hosts with user:password@ (not copied)",
                    "set user and password on the output instead (see its password instruction)")
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        if parts.port is None:
            parts = parts._replace(netloc=f"{parts.netloc}:9200")
        hosts.append(urlunsplit(parts._replace(path=parts.path or prefix)))
    return hosts


def _es_index(directive: Directive, reader: Reader, ctx: Context) -> str | None:
    if reader.get(values.boolean, "logstash_format"):
        prefix = reader.text("logstash_prefix") or "logstash"
        index = prefix + (reader.text("logstash_prefix_separator") or "-") + (
            reader.text("logstash_dateformat") or "%Y.%m.%d")
        param = reader.param("logstash_format")
        assert param is not None
        ctx.add("approximated", param.where, "logstash_format true",
                f"index {index!r} by each record's event time; logferry adds no @timestamp field")
    else:
        index = reader.text("index_name") or "fluentd"
    if reader.get(values.boolean, "utc_index") is False:
        ctx.add("approximated", directive.where, "utc_index false", "logferry names indices by UTC dates")
    if "${" in index:
        ctx.add("refused", directive.where, f"index {index}",
                "placeholders (${tag}, ${record}) in index names are not supported: name one index; output left out")
        return None
    return index


def _es_credentials(table: dict[str, Any], reader: Reader, ctx: Context, name: str) -> None:
    user = reader.text("user")
    if user:
        table["username"] = user
    password = secret_file(reader, ctx, name, "password", "password_file", "password")
    if password and user:
        table["password_file"] = password
    elif password or user:
        table.pop("username", None)
        ctx.add("refused", reader.directive.where, "user/password",
                "the user or the password is missing or comes from Ruby code: set username and the password by hand")
    if table["type"] != "elasticsearch":
        return
    api_key = secret_file(reader, ctx, name, "api_key", "api_key_file", "API key")
    if api_key and not user:
        table["api_key_file"] = api_key


def _es_operation(table: dict[str, Any], reader: Reader, ctx: Context) -> None:
    param = reader.param("write_operation")
    if param is None:
        return
    if param.value in ("index", "create"):
        table["op_type"] = param.value
    else:
        ctx.add("refused", param.where, f"write_operation {param.value}",
                "logferry writes with create (default) or index; upsert and update are not supported")


# -- opensearch -------------------------------------------------------------------------------------

#: ``<endpoint>`` parameters the AWS chain or botocore take care of by themselves.
_ENDPOINT_IGNORED = frozenset({"refresh_credentials_interval", "ecs_container_credentials_relative_uri",
                               "sts_credentials_region"})


def opensearch(directive: Directive, reader: Reader, ctx: Context, name: str) -> Built | None:
    """out_opensearch: the elasticsearch keys, and ``<endpoint>`` (Amazon OpenSearch, SigV4) as aws_* keys."""
    endpoints = directive.sections("endpoint")
    if not endpoints:
        return _bulk("opensearch", directive, reader, ctx, name)
    endpoint = Reader(endpoints[-1], ctx, _ENDPOINT_IGNORED)
    url = endpoint.text("url")
    if not url:
        ctx.add("refused", endpoints[-1].where, "<endpoint>", "no url; output left out")
        return None
    for key in ("user", "password", "host", "hosts", "port", "scheme", "path"):
        if (param := reader.param(key)) is not None:
            shown = "(value hidden)" if key == "password" else param.value
            ctx.add("note", param.where, f"{key} {shown}", "not used: <endpoint> says where to send and how to sign")
    built = _bulk("opensearch", directive, reader, ctx, name, signed=True)
    if built is None:
        return None
    built.table["hosts"] = [url.rstrip("/")]
    built.table["aws_sigv4"] = True
    endpoint.put(built.table, "aws_region", str, "region")
    service = endpoint.text("aws_service_name")
    if service and service != "es":
        built.table["aws_service"] = service
    _aws_credentials(endpoint, ctx, name, built.table)
    endpoint.leftovers("<endpoint>")
    return built


def _aws_credentials(endpoint: Reader, ctx: Context, name: str, table: dict[str, Any]) -> None:
    """Keys and roles of ``<endpoint>``: never copied; the AWS chain (or a profile) provides them."""
    for key in ("access_key_id", "secret_access_key"):
        if (param := endpoint.param(key)) is not None:
            ctx.add("secret", param.where, f"{key} (not copied)",
                    "logferry signs with the standard AWS chain: an instance or container role, or "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in systemd/logferry.service.d/override.conf")
    role = endpoint.param("assume_role_arn")
    if role is None:
        return
    table["aws_profile"] = name
    session = endpoint.text("assume_role_session_name")
    token = endpoint.text("assume_role_web_identity_token_file")
    lines = [f"[profile {name}]", f"role_arn = {role.value}",
             f"web_identity_token_file = {token}" if token else "credential_source = Ec2InstanceMetadata"]
    if session:
        lines.append(f"role_session_name = {session}")
    ctx.add("secret", role.where, "assume_role_arn",
            f"aws_profile = {name!r} assumes the role: write {' / '.join(lines)} (one per line; credential_source "
            "Environment or EcsContainer elsewhere than EC2) to /etc/logferry/aws-config and set "
            "AWS_CONFIG_FILE=/etc/logferry/aws-config in systemd/logferry.service.d/override.conf")


# -- s3 ---------------------------------------------------------------------------------------------

S3_IGNORED = frozenset({
    "check_apikey_on_start", "check_bucket", "check_object", "compute_checksums", "signature_version",
    "ssl_verify_peer", "hex_random_length", "index_format", "auto_create_bucket", "reduced_redundancy", "acl",
    "grant_full_control", "use_bundled_cert", "time_slice_format", "format",
})
_S3_STORE = {"gzip": "gzip", "json": "json", "txt": "json", "zstd": "zstd"}
_S3_KEY_PARTS = {
    "%{path}": "{path}", "%{time_slice}": "{time}", "%{index}": "{chunk_id}", "%{uuid_flush}": "{chunk_id}",
    "%{file_extension}": "{ext}", "%{hostname}": "{hostname}", "%{hex_random}": "",
}
_FLUENTD_DEFAULT_KEY = "%{path}%{time_slice}_%{index}.%{file_extension}"
#: How logferry writes what a Fluentd key placeholder became (said in the report: key names change).
_S3_RENDERED = {
    "%{time_slice}": "{time} as 20261118T110000Z (not in time_slice_format)",
    "%{index}": "{chunk_id} as 16 hex digits (not a counter)",
    "%{uuid_flush}": "{chunk_id} as 16 hex digits (not a UUID)",
    "%{file_extension}": "{ext} as jsonl, jsonl.gz or jsonl.zst (not json, gz or zst)",
    "%{hex_random}": "%{hex_random} left out (the chunk id keeps keys apart)",
}


def s3(directive: Directive, reader: Reader, ctx: Context, name: str) -> Built | None:
    """out_s3: bucket, region, key layout, compression, endpoint, storage class and SSE."""
    bucket = reader.text("s3_bucket")
    if not bucket:
        ctx.add("refused", directive.where, "<match> @type s3", "no s3_bucket; output left out")
        return None
    table: dict[str, Any] = {"type": "s3", "bucket": bucket, "region": reader.text("s3_region") or "us-east-1"}
    reader.put(table, "path", str, "path")
    if "${" in table.get("path", ""):
        ctx.add("refused", directive.where, f"path {table['path']}",
                "placeholders (${tag}, ${record}) in the key prefix are not supported; output left out")
        return None
    _s3_key_format(table, reader, ctx)
    _s3_store_as(table, reader, ctx)
    reader.put(table, "endpoint_url", str, "s3_endpoint")
    if reader.get(values.boolean, "force_path_style"):
        table["addressing_style"] = "path"
    reader.put(table, "storage_class", str, "storage_class")
    reader.put(table, "server_side_encryption", str, "use_server_side_encryption")
    reader.put(table, "kms_key_id", str, "ssekms_key_id")
    for key in ("aws_key_id", "aws_sec_key"):
        if (param := reader.param(key)) is not None:
            ctx.add("secret", param.where, f"{key} (not copied)",
                    "logferry takes AWS credentials from the standard chain: an instance or container role, or "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in systemd/logferry.service.d/override.conf")
    for section in directive.sections("assume_role_credentials", "web_identity_credentials"):
        ctx.add("refused", section.where, section.heading,
                "set AWS_ROLE_ARN (and AWS_WEB_IDENTITY_TOKEN_FILE) or an AWS_PROFILE with role_arn in the service's "
                "environment: the AWS chain assumes the role")
    for section in directive.sections("instance_profile_credentials", "shared_credentials"):
        ctx.add("note", section.where, section.heading, "the standard AWS chain reads these by itself")
    _format_is_json(directive, ctx)
    return Built(table)


def _s3_key_format(table: dict[str, Any], reader: Reader, ctx: Context) -> None:
    param = reader.param("s3_object_key_format")
    fluentd = param.value if param else _FLUENTD_DEFAULT_KEY
    if fluentd == _FLUENTD_DEFAULT_KEY:
        ctx.add("approximated", reader.directive.where, "s3_object_key_format",
                "objects are named {path}{hostname}-{time}-{chunk_id}.{ext} (one per chunk, never overwritten) "
                "instead of %{path}%{time_slice}_%{index}.%{file_extension}")
        return
    assert param is not None
    ours = fluentd
    for theirs, mine in _S3_KEY_PARTS.items():
        ours = ours.replace(theirs, mine)
    if "%{" in ours or "${" in ours:
        ctx.add("refused", param.where, f"s3_object_key_format {fluentd}", "placeholders other than %{path} "
                "%{time_slice} %{index} %{file_extension} %{hostname}; the default key layout is used")
        return
    if "{chunk_id}" not in ours:
        ours = ours.replace(".{ext}", "-{chunk_id}.{ext}") if ".{ext}" in ours else ours + "-{chunk_id}"
        ctx.add("approximated", param.where, f"s3_object_key_format {fluentd}",
                f"written as {ours!r}: each chunk's key holds its id, so a retried upload never overwrites another")
    if rendered := [text for theirs, text in _S3_RENDERED.items() if theirs in fluentd]:
        ctx.add("approximated", param.where, f"s3_object_key_format {fluentd}",
                f"object names change: {'; '.join(rendered)}")
    table["object_key_format"] = ours


def _s3_store_as(table: dict[str, Any], reader: Reader, ctx: Context) -> None:
    param = reader.param("store_as")
    if param is None:
        return
    store = _S3_STORE.get(param.value)
    if store is None:
        ctx.add("approximated", param.where, f"store_as {param.value}", "not supported; written as gzip")
        store = "gzip"
    table["store_as"] = store


# -- file -------------------------------------------------------------------------------------------

FILE_IGNORED = frozenset({"recompress", "time_slice_format", "format"})


def file(directive: Directive, reader: Reader, ctx: Context, name: str) -> Built | None:
    """out_file: one JSON Lines file per time window, named as Fluentd names it (slice, suffix, .gz)."""
    path = reader.text("path")
    if not path:
        ctx.add("refused", directive.where, "<match> @type file", "no path; output left out")
        return None
    if "${" in path:
        ctx.add("refused", directive.where, f"path {path}",
                "placeholders (${tag}, ${record}) in paths are not supported: one file per output; output left out")
        return None
    table: dict[str, Any] = {"type": "file", "path": path}
    gzip = (reader.text("compress") or "").lower() == "gzip"
    if gzip:
        table["compress"] = "gzip"
    suffix = (reader.text("path_suffix") or ".log") if reader.get(values.boolean, "add_path_suffix") is not False \
        else ""
    if not reader.get(values.boolean, "append"):
        ctx.add("approximated", directive.where, "append false",
                "Fluentd wrote each chunk to a file of its own (_0, _1, ... after the time slice); logferry appends "
                "a window's chunks to one file, as Fluentd does with append true")
    _format_is_json(directive, ctx)

    def finish(buffer: BufferResult) -> None:
        table["path"] = file_path(path, buffer.slice_format, gzip, suffix)

    return Built(table, finish=finish)


def file_path(path: str, slice_format: str, gzip: bool, suffix: str = ".log") -> str:
    """Where Fluentd's out_file (append true) writes a window: ``*`` becomes the slice, else the slice and
    ``suffix`` follow the path, unless the path holds time placeholders already.

    >>> file_path("/var/log/out/agent", "%Y%m%d", False), file_path("/o/a.*.log", "%Y%m%d%H", True)
    ('/var/log/out/agent.%Y%m%d.log', '/o/a.%Y%m%d%H.log.gz')
    >>> file_path("/o/agent.%Y-%m-%d", "%Y%m%d", False), file_path("/o/agent", "%Y%m%d", False, ".jsonl")
    ('/o/agent.%Y-%m-%d.log', '/o/agent.%Y%m%d.jsonl')
    """
    if "*" in path:
        written = path.replace("*", slice_format)
    elif "%" in path:
        written = path + suffix
    else:
        written = f"{path}.{slice_format}{suffix}"
    return written + (".gz" if gzip else "")


def _format_is_json(directive: Directive, ctx: Context) -> None:
    formats = directive.sections("format")
    kind = formats[-1].type if formats else directive.value("format", default="out_file")
    if kind != "json":
        where = formats[-1].where if formats else directive.where
        ctx.add("approximated", where, f"format {kind}",
                "logferry writes each record as one JSON line (the tag via [enrich] tag_key, the time as recorded)")


_S3_SECTIONS = frozenset({"buffer", "format", "assume_role_credentials", "web_identity_credentials",
                          "instance_profile_credentials", "shared_credentials"})
OUTPUTS: dict[str, OutputType] = {
    "elasticsearch": OutputType(elasticsearch, "search", BufferDefaults(time_keyed=False), ES_IGNORED),
    "s3": OutputType(s3, "archive", BufferDefaults(time_keyed=True, timekey=3600), S3_IGNORED, _S3_SECTIONS),
    "file": OutputType(file, "file", BufferDefaults(time_keyed=True, timekey=86400), FILE_IGNORED),
    "opensearch": OutputType(opensearch, "search", BufferDefaults(time_keyed=False), ES_IGNORED,
                             frozenset({"buffer", "format", "endpoint"})),
}
