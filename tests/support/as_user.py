"""Run a step of a security test as another (unprivileged) user: ``python -m tests.support.as_user``.

Started as root, it imports everything the step needs, then drops to the user's uid, gid
and supplementary groups, and only then acts. The interpreter may live where the user
cannot read it (pyenv under /root), which is why it is not simply exec'd as that user.

Steps:

* ``tap CONFIG [logferry tap options]``: ``logferry tap`` as that user (exit code and output as is).
* ``probe ADDRESS PATH...``: try every way to records an outsider has: the TCP endpoint's
  paths, then each PATH (a file is read, a socket connected to, a directory listed); print
  one JSON object per line: ``{"what": ..., "got": ...}`` where ``got`` is "denied" or what it read.
"""

from __future__ import annotations

import argparse
import os
import pwd
import socket
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson

import pipeline.cli
import pipeline.runtime.tap_socket  # `logferry tap` imports it lazily: import it now, while we may
from pipeline.config import load_settings

HTTP_PATHS = ("/tap", "/tap?tag=**", "/status", "/metrics", "/health")


def drop_to(name: str) -> None:
    """Become ``name``: its groups, its gid, then its uid (in that order: after setuid we could not)."""
    pw = pwd.getpwnam(name)
    os.setgroups(os.getgrouplist(name, pw.pw_gid))
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    assert os.geteuid() == pw.pw_uid != 0


def probe_http(address: str, path: str) -> str:
    """What GET ``path`` gives: "HTTP <status>: <the first bytes>"."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            status, body = response.status, _read_some(response)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return f"HTTP {status}: {body[:4096].decode('utf-8', 'replace')}"


def _read_some(response: object) -> bytes:
    """What a (possibly endless) response sends within its timeout."""
    try:
        return response.read1(65536)  # type: ignore[attr-defined, no-any-return]
    except TimeoutError:
        return b""


def probe_path(path: Path) -> str:
    """Read a file, connect to a socket, list a directory: "denied", or what it got."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISSOCK(mode):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                sock.sendall(b"GET /tap HTTP/1.0\r\n\r\n")
                return f"connected: {sock.recv(4096)!r}"
        if stat.S_ISDIR(mode):
            return f"listed: {os.listdir(path)}"
        with path.open("rb") as handle:
            return f"read: {handle.read(4096)!r}"
    except PermissionError:
        return "denied"


def _import_codecs() -> None:
    """Codecs are imported on first use; after the drop they could not be."""
    for codec in ("idna", "latin-1", "ascii", "utf-8"):
        "x".encode(codec).decode(codec)


def main(argv: list[str]) -> int:
    """Parse, prepare as root, drop privileges, act."""
    parser = argparse.ArgumentParser(prog="as_user")
    parser.add_argument("user")
    parser.add_argument("step", choices=["tap", "probe"])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    _import_codecs()
    if args.step == "tap":
        load_settings(Path(args.rest[0]))  # imports what validation needs, while we still can
        drop_to(args.user)
        return pipeline.cli.main(["tap", "-c", *args.rest])
    drop_to(args.user)
    address, paths = args.rest[0], [Path(p) for p in args.rest[1:]]
    results = [(f"http {p}", probe_http(address, p)) for p in HTTP_PATHS]
    results += [(str(p), probe_path(p)) for p in paths]
    for what, got in results:
        sys.stdout.write(orjson.dumps({"what": what, "got": got}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
