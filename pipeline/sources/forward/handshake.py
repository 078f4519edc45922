"""The shared-key handshake of Forward Protocol v1 (HELO, PING, PONG), as in_forward does it.

The server opens with ``["HELO", {"nonce", "auth", "keepalive"}]``; the client answers
``["PING", hostname, salt, sha512_hex(salt + hostname + nonce + shared_key), username,
password_digest]``; the server checks the digest and replies ``["PONG", ok, reason,
self_hostname, sha512_hex(salt + self_hostname + nonce + shared_key)]``, then closes the
connection if ``ok`` is false. User authentication (``auth``) is not offered.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from pipeline.sources.forward.codec import pack


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha512()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
    return h.hexdigest()


@dataclass(frozen=True)
class Handshake:
    """One connection's handshake state: its nonce and the server's key and name."""

    shared_key: str
    self_hostname: str
    nonce: str

    @classmethod
    def start(cls, shared_key: str, self_hostname: str) -> Handshake:
        """A handshake with a fresh nonce."""
        return cls(shared_key, self_hostname, secrets.token_hex(16))

    def helo(self) -> bytes:
        """The HELO the server sends first."""
        return pack(["HELO", {"nonce": self.nonce, "auth": "", "keepalive": True}])

    def check_ping(self, ping: object) -> tuple[bool, str, bytes]:
        """(accepted, reason, PONG bytes) for the client's PING message."""
        if not isinstance(ping, list | tuple) or len(ping) < 4 or ping[0] != "PING":
            return False, "expected PING after HELO", self._pong(False, "expected PING", "")
        hostname, salt, digest = ping[1], ping[2], ping[3]
        if not all(isinstance(v, str | bytes) for v in (hostname, salt, digest)):
            return False, "malformed PING", self._pong(False, "malformed PING", "")
        expected = _digest(salt, hostname, self.nonce, self.shared_key)
        given = digest.decode("ascii", "replace") if isinstance(digest, bytes) else digest
        if not hmac.compare_digest(expected, given):
            return False, f"wrong shared_key from client {hostname!r}", self._pong(False, "shared_key mismatch", "")
        return True, "", self._pong(True, "", salt)

    def _pong(self, ok: bool, reason: str, salt: str | bytes) -> bytes:
        digest = _digest(salt, self.self_hostname, self.nonce, self.shared_key) if ok else ""
        return pack(["PONG", ok, reason, self.self_hostname, digest])


def client_ping(helo: object, hostname: str, shared_key: str) -> bytes:
    """The PING a client sends after ``helo`` (for tests and benchmarks).

    >>> import msgpack
    >>> server = Handshake.start("k", "srv")
    >>> ok, _, _ = server.check_ping(msgpack.unpackb(client_ping(msgpack.unpackb(server.helo()), "cli", "k")))
    >>> ok
    True
    """
    assert isinstance(helo, list) and helo[0] == "HELO"
    nonce = helo[1]["nonce"]
    salt = secrets.token_hex(8)
    return pack(["PING", hostname, salt, _digest(salt, hostname, nonce, shared_key), "", ""])
