"""Configuration: TOML files and drop-ins, merged, overridden by ``LOGFERRY_`` variables, validated once.

Precedence, lowest first (the way systemd drop-ins work):

1. the main file (default ``/etc/logferry/logferry.toml``),
2. ``conf.d/*.toml`` beside it, merged in name order, later files win key by key,
3. environment variables: ``LOGFERRY_STATE_DIR=/x``, nested keys with ``__``
   (``LOGFERRY_OUTPUTS__SEARCH__PASSWORD=…``). A ``LOGFERRY_`` variable that names no
   key is an error too (except the few the project reads for other purposes, NOT_SETTINGS).

Every component is a frozen model that forbids unknown keys, so a typo fails at load
time with the full key path (``outputs.archive.buffer.timekey: …``), never at 3 a.m.
Secrets come from the environment or from a ``*_file`` key, so the main config can be
world-readable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.configbase import BufferConfig, Component, OutputBase
from pipeline.errors import ConfigError
from pipeline.registry import COMPONENT_TYPES, OutputConfig, SourceConfig, TransformConfig

DEFAULT_CONFIG = Path("/etc/logferry/logferry.toml")
__all__ = ["BufferConfig", "Component", "OutputBase", "OutputConfig", "Settings", "SourceConfig", "TransformConfig",
           "load_settings", "settings_from_dict"]
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
ENV_PREFIX = "LOGFERRY_"
# LOGFERRY_ variables the project reads that are not settings: the agent hook's log path
# (pipeline.client), and the test suite's knobs (tests/support/elasticsearch.py, tests/integration).
NOT_SETTINGS = frozenset({"LOGFERRY_AGENT_LOG", "LOGFERRY_CACHE", "LOGFERRY_ES_JAVA_HOME"})
NOT_SETTINGS_PREFIXES = ("LOGFERRY_TEST_",)




class EnrichConfig(Component):
    """``[enrich]``: fields added to every record, and where its event time comes from."""

    hostname_key: str = Field("hostname", description="Key for the host name; empty to leave it out.")
    hostname: str | None = Field(None, description="Host name to write; default: the machine's.")
    ingested_at_key: str = Field("ingested_at", description="Key for the ingest time; empty to leave out.")
    tag_key: str = Field("", description="Key for the source's tag; empty to leave it out.")
    fields: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Static fields added to every record."
    )
    time_key: str = Field("timestamp", description="Event time: epoch seconds or ISO-8601 under this key.")




class HealthConfig(Component):
    """``[health]``: the HTTP endpoint (metrics, health, status) and what counts as unhealthy."""

    listen: str = Field("127.0.0.1:9428", description="host:port for /metrics, /health, /status; empty: off.")
    output_failing_after: float = Field(300.0, gt=0, description="Unhealthy: an output failing this long.")
    buffer_high_water: float = Field(0.9, gt=0, le=1, description="Unhealthy: a buffer this full.")
    stall_after: float = Field(60.0, gt=0, description="Unhealthy: a file growing while its position is stuck.")
    check_interval: float = Field(5.0, gt=0, description="Seconds between health checks (and their log lines).")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
            raise ValueError("expected host:port, e.g. 127.0.0.1:9428")
        return value


class TapConfig(Component):
    """``[tap]``: the Unix socket ``logferry tap`` reads records through (never TCP: see docs/SECURITY.md)."""

    enabled: bool = Field(True, description="Serve the tap; false: no socket, no record leaves but to the outputs.")
    socket: str = Field(
        "", description="Socket path (mode 0660: root and the daemon's group may tap); empty: tap.sock in "
        "systemd's RuntimeDirectory ($RUNTIME_DIRECTORY), else in state_dir."
    )


class Settings(BaseSettings):
    """The whole daemon's configuration, validated once at load time."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path = Field(Path("/var/lib/logferry"), description="Positions, buffers, dead letters.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: float = Field(10.0, gt=0, description="Deadline for a clean stop, seconds.")
    flush_at_shutdown: bool = Field(False, description="Try to deliver staged chunks before exiting.")
    fsync: bool = Field(
        True,
        description="Force commits, deliveries and state to disk (power-loss safe); false: page cache only, "
        "still safe against process crashes and kill -9 (see pipeline/durability.py).",
    )
    parse_workers: int = Field(
        0, ge=0, le=16,
        description="Processes that parse, enrich and serialise tailed blocks beside the event loop (the "
        "second core); 0: all on the event loop. See docs/PERFORMANCE.md.",
    )
    enrich: EnrichConfig = Field(default_factory=EnrichConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    tap: TapConfig = Field(default_factory=TapConfig)
    sources: dict[str, SourceConfig] = Field(min_length=1)
    outputs: dict[str, OutputConfig] = Field(min_length=1)
    transforms: dict[str, TransformConfig] = Field(
        default_factory=dict, description="Named transforms that sources and outputs list in `transforms`."
    )

    @field_validator("sources", "outputs", "transforms")
    @classmethod
    def _names_are_plain(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"name {name!r} may only hold letters, digits, '_' and '-'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the TOML files (passed in as init values)."""
        return (env_settings, init_settings)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` key by key; tables merge, other values replace.

    >>> deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}, "b": 4})
    {'a': {'x': 1, 'y': 3}, 'b': 4}
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_files(main: Path, conf_d: Path | None = None) -> list[Path]:
    """The main file followed by its drop-ins in name order."""
    drop_in_dir = conf_d if conf_d is not None else main.parent / "conf.d"
    drop_ins = sorted(drop_in_dir.glob("*.toml")) if drop_in_dir.is_dir() else []
    return [main, *drop_ins]


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; errors name the file and position."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def load_settings(main: Path, conf_d: Path | None = None) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError naming every bad key."""
    merged: dict[str, Any] = {}
    files = config_files(main, conf_d)
    for path in files:
        merged = deep_merge(merged, read_toml(path))
    return settings_from_dict(merged, origin=", ".join(str(p) for p in files))


def settings_from_dict(values: dict[str, Any], origin: str = "config") -> Settings:
    """Validate an already merged mapping (environment overrides still apply)."""
    _check_environment(os.environ)
    _check_type_keys(values)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: invalid configuration:\n" + format_errors(exc)) from exc
    _check_transform_names(settings, origin)
    return settings


def _check_transform_names(settings: Settings, origin: str) -> None:
    """Every name in a ``transforms = [...]`` list names a ``[transforms.NAME]`` table."""
    problems = [
        f"  {section}.{name}.transforms: no [transforms.{wanted}] table"
        for section, table in (("sources", settings.sources), ("outputs", settings.outputs))
        for name, component in table.items()
        for wanted in component.transforms
        if wanted not in settings.transforms
    ]
    if problems:
        raise ConfigError(f"{origin}: invalid configuration:\n" + "\n".join(problems))


def _check_environment(environ: Mapping[str, str]) -> None:
    """Reject ``LOGFERRY_*`` variables that name no top-level key.

    pydantic-settings reads only the variables of known fields and ignores the rest, so a
    typo (``LOGFERRY_STATEDIR``) would silently leave the TOML value in force. Nested names
    (``LOGFERRY_OUTPUTS__SEARCH__PASSWURD``) need no check here: they reach validation as
    keys and fail there with their path. Names are matched case-insensitively, as pydantic-settings does.
    """
    unknown = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES):
            continue
        key = name.removeprefix(ENV_PREFIX).split("__", 1)[0].lower()
        if key not in Settings.model_fields:
            unknown.append(f"  {variable}: unknown environment variable (no top-level key {key!r})")
    if unknown:
        raise ConfigError("invalid configuration:\n" + "\n".join(unknown))


def _check_type_keys(values: dict[str, Any]) -> None:
    """Name a missing or unknown ``type`` plainly (pydantic's union message is cryptic)."""
    problems = []
    for section in ("sources", "outputs", "transforms"):
        table = values.get(section)
        if not isinstance(table, dict):
            continue
        for name, body in table.items():
            if isinstance(body, dict) and body.get("type") not in COMPONENT_TYPES:
                got = body.get("type")
                what = "is missing" if got is None else f"is {got!r}"
                problems.append(f"  {section}.{name}.type: {what}; expected one of {sorted(COMPONENT_TYPES)}")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def format_errors(exc: ValidationError) -> str:
    """One line per problem, each starting with its dotted key path."""
    lines = []
    for error in exc.errors():
        path = key_path(error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def key_path(loc: tuple[int | str, ...]) -> str:
    """Dotted key path from a pydantic location, without the union's type tag.

    >>> key_path(("outputs", "archive", "s3", "buffer", "timekey"))
    'outputs.archive.buffer.timekey'
    """
    parts = [str(p) for p in loc]
    if len(parts) >= 3 and parts[0] in ("sources", "outputs", "transforms") and parts[2] in COMPONENT_TYPES:
        del parts[2]
    return ".".join(parts)


def secret_value(inline: SecretStr | None, file: Path | None) -> str | None:
    """A secret from its file (trailing newline stripped) or from config/environment."""
    if file is not None:
        return file.read_text().rstrip("\n")
    return inline.get_secret_value() if inline is not None else None


def effective_hostname(enrich: EnrichConfig) -> str:
    """The host name records carry."""
    return enrich.hostname or os.uname().nodename
