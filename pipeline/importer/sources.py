"""``<source>`` directives → ``[sources.NAME]`` tables, one handler per Fluentd input type.

Adding a type is one entry in :data:`SOURCES`: a function from the directive to a
:class:`SourceSpec` (or None after reporting why not).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.importer import values
from pipeline.importer.context import Context, Reader
from pipeline.importer.fluentd_conf import Directive
from pipeline.importer.outputs import SECRETS_DIR
from pipeline.importer.toml_writer import key as toml_key

#: in_tail parameters that need nothing in logferry (it always follows inodes, uses inotify, ...).
TAIL_IGNORED = frozenset({
    "follow_inodes", "enable_watch_timer", "enable_stat_watcher", "open_on_every_update", "read_lines_limit",
    "read_bytes_limit_per_second", "skip_refresh_on_startup", "ignore_repeated_permission_error", "pos_file",
    "pos_file_compaction_interval", "emit_unmatched_lines", "@label", "tag", "path",
    "exclude_path", "read_from_head", "rotate_wait", "refresh_interval", "format", "time_key", "time_format",
    "keep_time_key", "path_timezone",
})
PARSE_IGNORED = frozenset({"time_format", "time_type", "keep_time_key", "json_parser", "estimate_current_event",
                           "timezone", "utc", "localtime", "null_empty_string", "time_key"})
_GLOB = re.compile(r"[*?\[\]{}]+")


@dataclass
class SourceSpec:
    """A translated source: its table, its tag for routing, and what the cut-over needs."""

    name: str
    directive: Directive
    table: dict[str, Any]
    routing_tags: list[str]  # the tags Fluentd would give its records (per path pattern for ``tag x.*``)
    label: str | None = None
    pos_file: str | None = None
    time_key: str | None = None
    notes: list[str] = field(default_factory=list)
    #: a source keeping its clients' tags: patterns every tag it routes matches (None: ``routing_tags``)
    open_tags: list[str] | None = None
    #: ``add_tag_prefix``: Fluentd routed ``PREFIX.tag``, logferry routes the client's tag
    tag_prefix: str = ""


SourceHandler = Callable[[Directive, Context], SourceSpec | None]


def _strftime_as_glob(path: str) -> str:
    """An in_tail path with strftime placeholders as the glob of every file they may name.

    >>> _strftime_as_glob("/logs/%Y-%m-%d/agent.%H.log"), _strftime_as_glob("/logs/100%%/a.log")
    ('/logs/*-*-*/agent.*.log', '/logs/100%/a.log')
    """
    return re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else "*", path)


def tail(directive: Directive, ctx: Context) -> SourceSpec | None:
    """in_tail: JSON lines only, followed by glob, with rotation."""
    reader = Reader(directive, ctx, TAIL_IGNORED)
    parsed = _json_parser(directive, reader, ctx)
    paths = reader.get(values.string_list, "path")
    tag = reader.text("tag")
    if parsed is None or not paths or not tag:
        if parsed is not None:
            ctx.add("refused", directive.where, "<source> @type tail", "needs path and tag; left out")
        return None
    if any("%" in path for path in paths):
        # in_tail expands strftime placeholders at each refresh (today's file); a glob follows every day's.
        globbed = [_strftime_as_glob(path) for path in paths]
        ctx.add("approximated", directive.where, f"path {','.join(paths)}",
                f"strftime placeholders become *: {','.join(globbed)} follows every file they may name, not only "
                "the current one")
        paths = globbed
    if broad := [path for path in paths if path.rsplit("/", 1)[-1].endswith("*")]:
        ctx.add("note", directive.where, f"path {','.join(broad)}",
                "the glob also matches rotated files (NAME.1): with copytruncate rotation each copy is followed as "
                "a new file and read from its head (its lines twice); narrow it (*.log) or add exclude_path")
    table: dict[str, Any] = {"type": "tail", "paths": paths}
    reader.put(table, "exclude", values.string_list, "exclude_path")
    table["tag"] = _fixed_tag(tag, directive, ctx)
    table["format"] = "json"
    table["read_from_head"] = reader.get(values.boolean, "read_from_head") or False
    reader.put(table, "rescan_interval", values.seconds, "refresh_interval")
    reader.put(table, "rotate_wait", values.seconds, "rotate_wait")
    reader.put(table, "max_line_bytes", values.size, "max_line_size")
    if (recent := reader.param("limit_recently_modified")) is not None:
        ctx.add("approximated", recent.where, f"limit_recently_modified {recent.value}",
                "logferry follows every matching file, however old (exclude old ones with exclude_path)")
    name = ctx.name_for(directive, "tail")
    reader.leftovers("<source> @type tail")
    return SourceSpec(name, directive, table, [_routing_tag(tag, p) for p in paths], directive.value("@label"),
                      reader.text("pos_file"), parsed or None)


#: in_forward parameters that need nothing in logferry (timeouts and logging of its own, ...).
FORWARD_IGNORED = frozenset({
    "linger_timeout", "chunk_size_warn_limit", "send_keepalive_packet", "backlog", "blocking_timeout",
    "@label", "resolve_hostname",
})
_TLS_SECRET = ("private_key_passphrase", "ca_private_key_passphrase")


def forward(directive: Directive, ctx: Context) -> SourceSpec | None:
    """in_forward: address, handshake, TLS and chunk limit; each client's tag is kept for routing."""
    reader = Reader(directive, ctx, FORWARD_IGNORED)
    name = ctx.name_for(directive, "forward")
    # Fluentd listens on every address unless told otherwise; logferry's default is loopback
    table: dict[str, Any] = {"type": "forward", "tag": "", "bind": reader.text("bind") or "0.0.0.0",
                             "port": reader.get(int, "port") or 24224}
    tag = reader.text("tag")
    prefix = reader.text("add_tag_prefix") or ""
    if tag:  # Fluentd adds the prefix to this tag too: a fixed tag can be written whole
        table["tag"] = tag = f"{prefix}.{tag}" if prefix else tag
    if (limit := reader.get(values.size, "chunk_size_limit")) is not None:
        table["chunk_limit_bytes"] = max(limit, 1024)
        if limit > 32 << 20:  # the whole message may be as large as the chunk
            table["message_limit_bytes"] = limit
        ctx.add("approximated", directive.where, "chunk_size_limit",
                "a larger chunk closes its connection (the client sends it again) where Fluentd dropped it")
    _forward_invalid(reader, ctx)
    _forward_refused(reader, ctx)
    if prefix and not tag:
        ctx.add("approximated", directive.where, f"add_tag_prefix {prefix}",
                f"logferry keeps the client's tag as sent: routing was worked out for {prefix}.TAG and the outputs' "
                f"match patterns are written without `{prefix}.`; [enrich] tag_key writes the tag without it")
    _forward_security(directive, table, ctx, name)
    _forward_tls(directive, table, ctx)
    if table["bind"] not in ("127.0.0.1", "::1", "localhost") and not directive.sections("security", "transport"):
        ctx.add("note", directive.where, f"bind {table['bind']}",
                "as in Fluentd, anyone who reaches the port can send records (`logferry check` warns): consider a "
                "shared_key or TLS")
    for child in directive.children:
        if child.name not in ("security", "transport"):
            ctx.add("refused", child.where, child.heading, "<source> @type forward has no such section in logferry")
    reader.leftovers("<source> @type forward")
    routing = [tag] if tag else None
    return SourceSpec(name, directive, table, routing or [], directive.value("@label"),
                      open_tags=None if routing else [f"{prefix}.**" if prefix else "**"],
                      tag_prefix="" if tag else prefix)


def _forward_invalid(reader: Reader, ctx: Context) -> None:
    skip = reader.param("skip_invalid_event")
    if skip is not None and (reader.get(values.boolean, "skip_invalid_event") or False):
        ctx.add("approximated", skip.where, "skip_invalid_event true",
                "a record that is not a map goes to the dead-letter store (STATE_DIR/dead-letter/) instead of "
                "being dropped")


def _forward_refused(reader: Reader, ctx: Context) -> None:
    for key in ("source_hostname_key", "source_address_key"):
        if (param := reader.param(key)) is not None:
            ctx.add("refused", param.where, f"{key} {param.value}",
                    "logferry does not add the sender's host name or address to records: have each client add "
                    "its own (Fluent Bit: a record_modifier filter with ${HOSTNAME}; fluent-logger: a field)")
    if (param := reader.param("deny_keepalive")) is not None and reader.get(values.boolean, "deny_keepalive"):
        ctx.add("approximated", param.where, "deny_keepalive true",
                "logferry keeps connections open until keepalive_timeout (600 s) of idleness")


def _forward_security(directive: Directive, table: dict[str, Any], ctx: Context, name: str) -> None:
    for section in directive.sections("security"):
        reader = Reader(section, ctx, frozenset({"allow_anonymous_source"}))
        hostname = reader.param("self_hostname")
        if hostname is not None and hostname.ruby and "gethostname" in hostname.value:
            table["self_hostname"] = "logferry"
            ctx.add("note", hostname.where, f"self_hostname {hostname.value}",
                    "written as \"logferry\": clients only log the name the server gives in the handshake")
        else:
            reader.put(table, "self_hostname", str, "self_hostname")
        key = reader.param("shared_key")
        if key is not None:
            origin = f" (td-agent read it from ${key.env})" if key.env else ""
            ctx.add("secret", key.where, "shared_key (not copied)",
                    f"set LOGFERRY_SOURCES__{name.upper()}__SHARED_KEY to the key{origin} in the service's "
                    "environment (systemd/logferry.service.d/override.conf, mode 0600): until it is set the source "
                    "accepts clients without the handshake (`logferry check` warns when it listens beyond loopback)")
        _forward_users(section, reader, ctx, name)
        for client in section.sections("client"):
            ctx.add("refused", client.where, client.heading,
                    "logferry does not restrict clients by address or give them keys of their own: use a firewall "
                    "and one shared_key")
        reader.leftovers("<security>")


_ENV_NAME = re.compile(r"[a-z0-9]+(_[a-z0-9]+)*")  # a user name LOGFERRY_..._USERS__NAME__PASSWORD can spell


def _forward_users(section: Directive, reader: Reader, ctx: Context, name: str) -> None:
    """``user_auth true`` and its ``<user>``s: like the shared key, all go to the service's environment.

    user_auth needs the shared key and a password per user, none of which is copied: written
    into the TOML it would fail `logferry check` until they are set, so it goes with them.
    """
    param = reader.param("user_auth")
    enabled = reader.get(values.boolean, "user_auth") or False
    users = section.sections("user")
    if not enabled:
        for user in users:
            ctx.add("note", user.where, user.heading, "Fluentd ignored <user> without user_auth true; left out")
        return
    assert param is not None
    if not users:
        ctx.add("refused", param.where, "user_auth true without <user>",
                "Fluentd refused every client; logferry wants at least one user: left out")
        return
    prefix = f"LOGFERRY_SOURCES__{name.upper()}"
    ctx.add("secret", param.where, "user_auth true",
            f"set {prefix}__USER_AUTH=true in the service's environment with the shared key and the users' "
            "passwords below (the file passes `logferry check` without them): until then the source asks "
            "clients for no user name")
    seen: set[str] = set()
    for user in users:
        user_reader = Reader(user, ctx)
        username = user_reader.text("username")
        password = user_reader.param("password")
        user_reader.leftovers("<user>")
        if not username or password is None:
            ctx.add("refused", user.where, user.heading, "needs username and password; left out")
            continue
        if username in seen:
            ctx.add("refused", user.where, f"<user> {username}",
                    "a second password for the same user (Fluentd took either): left out")
            continue
        seen.add(username)
        origin = f" (td-agent read it from ${password.env})" if password.env else ""
        if _ENV_NAME.fullmatch(username):
            ctx.add("secret", password.where, f"<user> {username} password (not copied)",
                    f"set {prefix}__USERS__{username.upper()}__PASSWORD to its password{origin}")
        else:  # the environment's names are read in lower case and split at "__"
            path = f"{SECRETS_DIR}/{name}-user-{re.sub(r'[^A-Za-z0-9_.-]+', '_', username)}-password"
            ctx.add("secret", password.where, f"<user> {username} password (not copied)",
                    f"the environment cannot name this user: write its password{origin} to {path} (readable by "
                    f"the logferry user only) and add [sources.{name}.users.{toml_key(username)}] with "
                    f'password_file = "{path}"')


def _forward_tls(directive: Directive, table: dict[str, Any], ctx: Context) -> None:
    for section in directive.sections("transport"):
        if section.arg != "tls":
            continue
        reader = Reader(section, ctx, frozenset({"version", "min_version", "max_version", "ciphers", "insecure"}))
        cert, key = reader.text("cert_path"), reader.text("private_key_path")
        if cert and key:
            table["tls_cert"], table["tls_key"] = cert, key
        else:
            ctx.add("refused", section.where, "<transport tls>",
                    "logferry serves TLS from a PEM certificate and key it is given (cert_path and "
                    "private_key_path); generated or CA-signed-on-start certificates are not offered")
        for secret in _TLS_SECRET:
            if (param := reader.param(secret)) is not None:
                ctx.add("refused", param.where, f"{secret} (not copied)",
                        "logferry reads an unencrypted key: write it decrypted (openssl pkey -in KEY -out NEW), "
                        "readable by the logferry user only")
        if reader.get(values.boolean, "client_cert_auth"):
            ctx.add("refused", section.where, "client_cert_auth true",
                    "logferry does not check client certificates: use shared_key to authenticate clients")
        reader.leftovers("<transport tls>")


SOURCES: dict[str, SourceHandler] = {
    "tail": tail,
    "forward": forward,
}


def _json_parser(directive: Directive, reader: Reader, ctx: Context) -> str | None:
    """The parse's time key ("" for none) when lines are JSON; None (reported) otherwise."""
    sections = directive.sections("parse")
    if sections:
        parse = sections[-1]
        kind, where = parse.type, parse.where
        parse_reader = Reader(parse, ctx, PARSE_IGNORED)
        time_key = parse.value("time_key", default="") or ""
    else:
        kind, where = reader.text("format") or "", directive.where
        parse_reader, time_key = None, directive.value("time_key", default="") or ""
    if kind != "json":
        ctx.add("refused", where, f"<source> @type tail with parser {kind or '(none)'}",
                "logferry reads JSON lines only: have the application write JSON lines, or keep td-agent "
                "for this source; left out")
        return None
    if parse_reader is not None:
        parse_reader.leftovers("<parse> @type json")
    _time_differences(sections[-1] if sections else directive, time_key, ctx)
    return time_key


def _time_differences(parse: Directive, time_key: str, ctx: Context) -> None:
    """What Fluentd did with the event-time field that logferry does not (its key is [enrich] time_key)."""
    if not time_key:
        return  # Fluentd's `time`: reported once for all sources (translate._enrich)
    if (parse.value("keep_time_key", default="") or "").lower() not in ("true", "yes"):
        ctx.add("approximated", parse.where, f"time_key {time_key}",
                f"Fluentd removed `{time_key}` from the record (keep_time_key false); logferry keeps it")
    time_format = parse.param("time_format")
    if time_format is not None and parse.value("time_type", default="string") == "string":
        ctx.add("approximated", time_format.where, f"time_format {time_format.value}",
                f"logferry reads `{time_key}` as epoch seconds or ISO-8601 only; other values get the ingest time")


def _fixed_tag(tag: str, directive: Directive, ctx: Context) -> str:
    if "*" not in tag:
        return tag
    fixed = re.sub(r"\.?\*\.?", ".", tag).strip(".") or "tail"
    ctx.add("approximated", directive.where, f"tag {tag}",
            f"Fluentd puts each file's path in the tag; logferry gives every record the tag {fixed!r} "
            "(routing was worked out for the paths in `path`)")
    return fixed


def _routing_tag(tag: str, path: str) -> str:
    """The tag Fluentd gives lines of a file matching ``path`` (glob characters stand for a name).

    >>> _routing_tag("app.*", "/var/log/ai/*.log"), _routing_tag("ai.interactions", "/x")
    ('app.var.log.ai.x.log', 'ai.interactions')
    """
    if "*" not in tag:
        return tag
    return tag.replace("*", _GLOB.sub("x", path).strip("/").replace("/", "."))
