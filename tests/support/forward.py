"""Forward-protocol test support: configs, a raw msgpack client, and the real Go and Node.js senders.

The Go sender (``forward_sender_go/``, fluent-logger-golang v1.10.2 from the Go module proxy)
is built with ``go build`` into ``/var/cache/logferry-test/forward-sender-go/``; the Node.js
sender (``forward_sender_node.js``) runs with fluent-logger 3.4.1 installed from npm into
``/var/cache/logferry-test/node-fluent-logger-3.4.1/``. Both are made once and reused; a file
lock keeps two test processes from making them at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import msgpack

from tests.support.daemon import Daemon, Layout, render_toml, wait_for
from tests.support.elasticsearch import _file_lock, access_for

HERE = Path(__file__).resolve().parent
GO_LOGGER = "v1.10.2"
NODE_LOGGER = "3.4.1"


def cache_root() -> Path:
    """Where the senders are built (``LOGFERRY_CACHE`` overrides, as for Elasticsearch)."""
    env = os.environ.get("LOGFERRY_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/cache/logferry-test")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "logferry"


def forward_config(layout: Layout, port: int, source: dict[str, Any] | None = None,
                   outputs: dict[str, Any] | None = None, **top: Any) -> Path:
    """A forward → file pipeline over ``layout`` (plus ``outputs``), with quick flushes."""
    doc: dict[str, Any] = {
        "state_dir": layout.state, "shutdown_timeout": 10.0, **top, "health": {"listen": "127.0.0.1:0"},
        "enrich": {"tag_key": "tag"},
        "sources": {"fluent": {"type": "forward", "port": port, **(source or {})}},
        "outputs": {"debug": {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"),
                              "buffer": {"flush_interval": 0.2, "retry_wait": 0.1}},
                    **(outputs or {})},
    }
    layout.config.write_text(render_toml(doc))
    return layout.config


def es_output(url: str, index: str) -> dict[str, Any]:
    """An elasticsearch output taking every tag, with quick flushes and the cluster's access."""
    return {"type": "elasticsearch", "hosts": [url], "index": index, "request_timeout": 10.0,
            **access_for(url).output_options(),
            "buffer": {"flush_interval": 0.2, "retry_wait": 0.1, "retry_max_interval": 1.0}}


class RawClient:
    """Hand-made Forward Protocol frames over one TCP connection."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.unpacker = msgpack.Unpacker(raw=False)

    def send(self, message: Any) -> None:
        """One message, msgpack-encoded."""
        self.sock.sendall(msgpack.packb(message))

    def send_bytes(self, data: bytes) -> None:
        """Raw bytes (garbage, truncated messages)."""
        self.sock.sendall(data)

    def receive(self) -> Any:
        """The next msgpack object from the server (an ack, HELO or PONG); None when it closed."""
        while True:
            with contextlib.suppress(msgpack.OutOfData):
                return self.unpacker.unpack()
            data = self.sock.recv(65536)
            if not data:
                return None
            self.unpacker.feed(data)

    def closed_by_server(self) -> bool:
        """Whether the server closed this connection (reads end of stream)."""
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def _locked(target: Path) -> contextlib.AbstractContextManager[None]:
    """The lock file beside ``target`` that serialises building it (its folder created first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return _file_lock(target.parent / f"{target.name}.lock")


def go_sender() -> Path:
    """The Go sender binary, built on first use (needs ``go`` and the Go module proxy)."""
    target = cache_root() / f"forward-sender-go-{GO_LOGGER}"
    binary = target / "sender"
    source = HERE / "forward_sender_go"
    with _locked(target):
        stamp = max(p.stat().st_mtime for p in source.iterdir())
        if binary.exists() and binary.stat().st_mtime >= stamp:
            return binary
        go = shutil.which("go") or "/usr/local/go/bin/go"
        env = {**os.environ, "GOMODCACHE": str(cache_root() / "go" / "mod"),
               "GOCACHE": str(cache_root() / "go" / "build"), "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        subprocess.run([go, "build", "-o", str(binary), "."], cwd=source, env=env, check=True,
                       capture_output=True, timeout=600)
    return binary


def node_sender() -> tuple[str, Path, dict[str, str]]:
    """(node, the sender script, its environment), installing fluent-logger from npm on first use."""
    target = cache_root() / f"node-fluent-logger-{NODE_LOGGER}"
    with _locked(target):
        if not (target / "node_modules" / "fluent-logger" / "package.json").exists():
            target.mkdir(parents=True, exist_ok=True)
            npm = shutil.which("npm") or "npm"
            subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", f"fluent-logger@{NODE_LOGGER}"],
                           cwd=target, check=True, capture_output=True, timeout=600)
    node = shutil.which("node") or "node"
    return node, HERE / "forward_sender_node.js", {**os.environ, "NODE_PATH": str(target / "node_modules")}


def wait_listening(daemon: Daemon) -> Daemon:
    """Wait until the daemon's latest start has its forward source listening ("logferry running"
    is logged as the sources start, a moment before the socket is bound)."""
    wait_for(lambda: daemon.log().count(" listening on 127.0.0.1:") >= daemon.log().count("logferry running"),
             timeout=30, what="the forward source listening")
    return daemon
