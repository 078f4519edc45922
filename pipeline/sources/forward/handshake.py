"""The handshake of Forward Protocol v1 (HELO, PING, PONG), as in_forward does it.

The server opens with ``["HELO", {"nonce", "auth", "keepalive"}]``; the client answers
``["PING", hostname, salt, sha512_hex(salt + hostname + nonce + shared_key), username,
password_digest]``; the server checks the digest and replies ``["PONG", ok, reason,
self_hostname, sha512_hex(salt + self_hostname + nonce + shared_key)]``, then closes the
connection if ``ok`` is false.

With ``user_auth`` the HELO's ``auth`` is a fresh random salt (msgpack bin, as Fluentd sends
it) and the PING must also carry a known ``username`` and ``password_digest =
sha512_hex(auth_salt + username + password)``; the shared key is checked first, as in_forward
does. A refused client is told only ``username/password mismatch`` (in_forward's words); the
log line says which user and why, never a password or a digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.sources.forward.codec import pack

SHOWN = 100  # characters of a client-chosen name put in a log line (a PING may be megabytes)


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha512()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
    return h.hexdigest()


def _same(expected: str, given: str | bytes) -> bool:
    """Constant-time comparison of a hex digest with a client's (str or bytes, any characters)."""
    given_bytes = given.encode("utf-8", "surrogateescape") if isinstance(given, str) else given
    return hmac.compare_digest(expected.encode("ascii"), given_bytes)  # str would raise on non-ASCII input


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _shown(value: str | bytes) -> str:
    """A client-chosen name for a log line: quoted, escaped, cut short."""
    text = _text(value)
    return repr(text[:SHOWN] + "..." if len(text) > SHOWN else text)


@dataclass(frozen=True)
class Handshake:
    """One connection's handshake state: its nonce (and user-auth salt) and the server's secrets."""

    shared_key: str
    self_hostname: str
    nonce: str
    #: user name -> password when ``user_auth`` is on; None: no user authentication
    users: Mapping[str, str] | None = None
    auth_salt: bytes = b""

    @classmethod
    def start(cls, shared_key: str, self_hostname: str, users: Mapping[str, str] | None = None) -> Handshake:
        """A handshake with a fresh nonce (and, with ``users``, a fresh user-auth salt)."""
        salt = secrets.token_bytes(16) if users is not None else b""
        return cls(shared_key, self_hostname, secrets.token_hex(16), users, salt)

    def helo(self) -> bytes:
        """The HELO the server sends first."""
        # bytes pack as msgpack bin: Node's fluent-logger sends its user only for a bin salt, as Fluentd's is
        auth: str | bytes = self.auth_salt if self.users is not None else ""
        return pack(["HELO", {"nonce": self.nonce, "auth": auth, "keepalive": True}])

    def check_ping(self, ping: object) -> tuple[bool, str, bytes]:
        """(accepted, reason for the log, PONG bytes) for the client's PING message."""
        if not isinstance(ping, list | tuple) or len(ping) < 4 or ping[0] != "PING":
            return False, "expected PING after HELO", self._pong(False, "expected PING", "")
        hostname, salt, digest = ping[1], ping[2], ping[3]
        if not all(isinstance(v, str | bytes) for v in (hostname, salt, digest)):
            return False, "malformed PING", self._pong(False, "malformed PING", "")
        if not _same(_digest(salt, hostname, self.nonce, self.shared_key), digest):
            reason = f"wrong shared_key from client {_shown(hostname)}"
            return False, reason, self._pong(False, "shared_key mismatch", "")
        if self.users is not None and (refusal := self._user_refusal(ping[4:6], self.users)):
            reason = f"{refusal} (client {_shown(hostname)})"
            return False, reason, self._pong(False, "username/password mismatch", "")
        return True, "", self._pong(True, "", salt)

    def _user_refusal(self, fields: list[object] | tuple[object, ...], users: Mapping[str, str]) -> str | None:
        """Why the PING's user is refused (for the log), or None when its name and password digest match."""
        if len(fields) < 2 or not fields[0]:
            return "no user name in the PING (user_auth = true)"
        username, given = fields[0], fields[1]
        if not isinstance(username, str | bytes) or not isinstance(given, str | bytes):
            return "malformed PING (username, password digest)"
        name = _text(username)
        password = users.get(name)
        # computed for an unknown user too, so the time taken does not tell which names exist
        matches = _same(_digest(self.auth_salt, name, password or ""), given)
        if password is None:
            return f"unknown user {_shown(name)}"
        if not matches:
            return f"wrong password for user {_shown(name)}"
        return None

    def _pong(self, ok: bool, reason: str, salt: str | bytes) -> bytes:
        digest = _digest(salt, self.self_hostname, self.nonce, self.shared_key) if ok else ""
        return pack(["PONG", ok, reason, self.self_hostname, digest])


def client_ping(helo: object, hostname: str, shared_key: str, username: str = "", password: str = "") -> bytes:
    """The PING a client sends after ``helo`` (for tests and benchmarks), as Node's fluent-logger builds it.

    >>> import msgpack
    >>> server = Handshake.start("k", "srv", {"web": "pw"})
    >>> helo = msgpack.unpackb(server.helo())
    >>> [server.check_ping(msgpack.unpackb(client_ping(helo, "cli", "k", "web", pw)))[:2] for pw in ("pw", "no")]
    [(True, ''), (False, "wrong password for user 'web' (client 'cli')")]
    """
    assert isinstance(helo, list) and helo[0] == "HELO"
    nonce, auth = helo[1]["nonce"], helo[1].get("auth") or b""
    salt = secrets.token_hex(8)
    user = (username, _digest(auth, username, password)) if auth else ("", "")
    return pack(["PING", hostname, salt, _digest(salt, hostname, nonce, shared_key), *user])
