"""An authenticating HTTPS front for a test search server: what Amazon OpenSearch Service (SigV4) or a
secured cluster (basic auth) checks, in front of a test distribution that has no security plugin.

Each request's credentials are checked (:class:`SigV4Check` with botocore's own signer, or
:class:`BasicCheck`); a request that passes is forwarded to the upstream server as it came, one that
fails is answered as the real service would (403 with a ``message`` for a refused signature, 401 for a
wrong password) and never reaches the server.

Usage::

    with AuthFront(opensearch.url, SigV4Check({"AKID": "secret"}, "eu-west-1", "es"), certs_dir) as front:
        ...  # the output's hosts = [front.url], ca_file = front.ca_file
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.elasticsearch import write_certificates

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Refusal:
    """What the front answers instead of forwarding."""

    status: int
    body: bytes
    content_type: str = "application/json"


class Check(Protocol):
    """Decides whether a request is let through."""

    def __call__(self, method: str, url: str, headers: Message[str, str], body: bytes) -> Refusal | None:
        """None to forward the request, else the answer."""
        ...


@dataclass
class SigV4Check:
    """Verifies AWS SigV4 as Amazon OpenSearch Service does: botocore recomputes the signature with the
    secret of the request's access key id, over the headers it names, and compares."""

    keys: dict[str, str]  # access key id -> secret key
    region: str
    service: str
    seen_keys: list[str] = field(default_factory=list)  # the access key of each request let through

    def __call__(self, method: str, url: str, headers: Message[str, str], body: bytes) -> Refusal | None:
        """None if the signature is right, else a 403 like the service's."""
        match = _AUTH.fullmatch(headers.get("Authorization", ""))
        if match is None:
            return _forbidden("Authorization header requires AWS4-HMAC-SHA256 signature")
        key, _day, region, service, signed, signature = match.groups()
        if (region, service) != (self.region, self.service) or key not in self.keys:
            return _forbidden(f"The security token included in the request is invalid ({key}, {region}, {service})")
        if headers.get("X-Amz-Content-SHA256") != hashlib.sha256(body).hexdigest():
            return _forbidden("The provided x-amz-content-sha256 header does not match what was computed")
        names = signed.split(";")
        request = AWSRequest(method=method, url=url, data=body,
                             headers={name: headers.get(name, "") for name in names})
        request.context["timestamp"] = headers.get("X-Amz-Date", "")
        signer = SigV4Auth(Credentials(key, self.keys[key], headers.get("X-Amz-Security-Token")), service, region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature):
            return _forbidden("The request signature we calculated does not match the signature you provided. "
                              "Check your AWS Secret Access Key and signing method.")
        self.seen_keys.append(key)
        return None


@dataclass
class BasicCheck:
    """HTTP basic authentication with one user, answered like a secured OpenSearch (401)."""

    username: str
    password: str

    def __call__(self, method: str, url: str, headers: Message[str, str], body: bytes) -> Refusal | None:
        """None for the right user and password, else 401 Unauthorized."""
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if hmac.compare_digest(headers.get("Authorization", "").encode(), expected.encode()):
            return None
        return Refusal(401, b"Unauthorized", "text/plain; charset=UTF-8")


def _forbidden(message: str) -> Refusal:
    return Refusal(403, b'{"message":"' + message.replace('"', "'").encode() + b'"}')


class AuthFront:
    """The front on https://127.0.0.1:<free port>, with its own CA (``ca_file``), forwarding to ``upstream``."""

    def __init__(self, upstream: str, check: Check, certs: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.check = check
        self.certs = certs
        self.refused = 0
        self.forwarded = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    def __enter__(self) -> Self:
        write_certificates(self.certs)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certs / "node.crt", self.certs / "node.key")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="auth-front", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def answer(self, method: str, path: str, headers: Message[str, str], body: bytes) -> tuple[int, bytes, str]:
        """(status, body, content type) for one request: refused here, or the upstream's answer."""
        refusal = self.check(method, f"https://{headers.get('Host', '')}{path}", headers, body)
        if refusal is not None:
            self.refused += 1
            return refusal.status, refusal.body, refusal.content_type
        self.forwarded += 1
        forward = {name: value for name in ("Content-Type", "Content-Encoding", "Accept")
                   if (value := headers.get(name))}
        request = urllib.request.Request(self.upstream + path, data=body or None, method=method, headers=forward)
        try:
            with _NO_PROXY.open(request, timeout=60) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _handler(front: AuthFront) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the tests read the daemon's log, not this one."""

        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer, content_type = front.answer(self.command, self.path, self.headers, body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler
