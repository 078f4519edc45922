"""``[sources.NAME] type = "forward"``: the forward source's settings."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from pipeline.configbase import Component, MiB, SourceBase
from pipeline.errors import ConfigError


class ForwardUser(Component):
    """``[sources.NAME.users.USERNAME]``: one user ``user_auth`` accepts (in_forward's ``<user>``)."""

    password: SecretStr | None = Field(
        None, description="The password; better password_file or LOGFERRY_SOURCES__NAME__USERS__USERNAME__PASSWORD."
    )
    password_file: Path | None = Field(
        None, description="File holding the password (trailing newline stripped; not readable by others)."
    )

    @model_validator(mode="after")
    def _one_password(self) -> ForwardUser:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if self.password_file is None and not (self.password and self.password.get_secret_value()):
            raise ValueError("no password: set password_file, password or "
                             "LOGFERRY_SOURCES__NAME__USERS__USERNAME__PASSWORD")
        return self

    @field_validator("password_file")
    @classmethod
    def _password_file_usable(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_key_file(path)  # at load, as shared_key_file: `logferry check` fails naming the key
        return path

    def secret(self) -> str:
        """The password (its file read now); ValueError when the file has become unusable."""
        if self.password_file is not None:
            return read_key_file(self.password_file)
        assert self.password is not None  # checked at load
        return self.password.get_secret_value()


class ForwardSourceConfig(SourceBase):
    """``[sources.NAME] type = "forward"``: receive from fluent-logger, Fluentd and Fluent Bit (in_forward)."""

    type: Literal["forward"]
    tag: str = Field("", description="Empty: records keep the tag their client sent; else this tag replaces it.")
    bind: str = Field("127.0.0.1", description="Address to listen on (TCP, and UDP for heartbeats).")
    port: int = Field(24224, ge=0, le=65535, description="Port to listen on; 0 picks a free one.")
    shared_key: SecretStr | None = Field(
        None, description="Require the HELO/PING/PONG handshake with this key; empty: off."
    )
    shared_key_file: Path | None = Field(
        None, description="File holding the shared key (trailing newline stripped; not readable by others)."
    )
    self_hostname: str = Field("logferry", description="Host name this server gives in the handshake.")
    user_auth: bool = Field(
        False, description="Also require a user name and password in the handshake (in_forward's user_auth); "
        "needs shared_key(_file) and users."
    )
    users: dict[str, ForwardUser] = Field(
        default_factory=dict, description="[sources.NAME.users.USERNAME]: the users user_auth accepts."
    )
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
    def _consistent(self) -> ForwardSourceConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self._inline_key() and self.shared_key_file is not None:
            raise ValueError("set shared_key or shared_key_file, not both")
        if self.user_auth and not self.requires_handshake():
            raise ValueError("user_auth = true needs shared_key or shared_key_file: users are checked in the "
                             "shared-key handshake (as in Fluentd)")
        if self.user_auth and not self.users:
            raise ValueError("user_auth = true needs at least one user: [sources.NAME.users.USERNAME] with "
                             "password_file or password")
        if self.users and not self.user_auth:
            raise ValueError("users are checked only with user_auth = true: set it, or remove the users")
        if "" in self.users:
            raise ValueError("users: a user name cannot be empty")
        return self

    @field_validator("shared_key_file")
    @classmethod
    def _key_file_usable(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_key_file(path)  # at load: `logferry check` and the start fail on it, naming the key
        return path

    def key(self) -> str:
        """The handshake's key: ``shared_key`` or the content of ``shared_key_file`` ("": no handshake)."""
        if self.shared_key_file is not None:
            return read_key_file(self.shared_key_file)
        return self._inline_key()

    def passwords(self, name: str) -> dict[str, str] | None:
        """Each user's password, their files read now; None when ``user_auth`` is off.

        ConfigError naming the key when a password file has become unusable since the load.
        """
        if not self.user_auth:
            return None
        passwords = {}
        for user, entry in self.users.items():
            try:
                passwords[user] = entry.secret()
            except ValueError as exc:
                raise ConfigError(f"sources.{name}.users.{user}.password_file: {exc}") from exc
        return passwords

    def requires_handshake(self) -> bool:
        """Whether clients must pass the shared-key handshake (``shared_key`` or ``shared_key_file``)."""
        return bool(self._inline_key()) or self.shared_key_file is not None

    def _inline_key(self) -> str:
        return self.shared_key.get_secret_value() if self.shared_key is not None else ""

    def routes_by_record_tag(self) -> bool:
        """Whether each batch is routed by its own tag (the client's) rather than this source's."""
        return not self.tag

    def exposure_warning(self) -> str | None:
        """Why listening here is risky (a non-loopback address without TLS or shared_key), or None."""
        if self.tls_cert is not None or self.requires_handshake():
            return None
        try:
            loopback = ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            loopback = self.bind == "localhost"
        if loopback:
            return None
        return (f"bind = {self.bind!r}: anyone who reaches port {self.port} can send records; "
                "set shared_key(_file) or tls_cert/tls_key, or bind to 127.0.0.1")


def read_key_file(path: Path) -> str:
    """A key file's text without its trailing newline, as the project's other secret files are read.

    ValueError (the loader names the key) when it cannot be read, is empty, or is open to others:
    the service's group may read it (the daemon's own files are 0640), nobody else.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text().rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}"
                         ) from exc
    if mode & 0o007:
        raise ValueError(f"{path} is open to others (mode {stat.S_IMODE(mode):04o}): chmod o-rwx {path}")
    if not text:
        raise ValueError(f"{path} is empty")
    return text
