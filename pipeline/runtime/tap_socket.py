"""The tap's Unix domain socket: record contents only for root and the service's group.

The tap streams every enriched record, prompts and responses included, so it is not
served over TCP (any local process could connect there). It is served on a Unix socket
whose file is SOCKET_MODE (0660): connecting needs write permission on the file, which
only its owner (the daemon's user), its group (the daemon's group: ``Group=`` of the
systemd unit) and root have. The socket is bound and chmod-ed before listen(): until
then every connect() is refused, so there is no moment when a wider mode lets anyone in.

Where it lives: ``[tap] socket`` if set, else ``tap.sock`` in systemd's runtime
directory (``RuntimeDirectory=logferry``, ``$RUNTIME_DIRECTORY``), else in the state
directory. The daemon writes the path it bound to ``tap.address`` in the state directory
(0640, so again only the group can read it), which is how ``logferry tap`` finds it.

The protocol is HTTP/1.0, as on the TCP endpoint: ``curl --unix-socket PATH
http://logferry/tap?tag=ai.*`` works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import stat
import struct
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from pipeline.config import Settings
from pipeline.durability import make_dirs, write_atomic
from pipeline.errors import LogferryError
from pipeline.runtime.http import connection_handler, read_request
from pipeline.runtime.tap import TapHub

log = logging.getLogger("logferry.tap")
SOCKET_NAME = "tap.sock"
ADDRESS_FILE = "tap.address"
SOCKET_MODE = 0o660  # owner and group may connect; nobody else
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class TapRefused(LogferryError):
    """The tap's socket exists but this user may not connect to it."""


class NoDaemon(LogferryError):
    """Nothing answers on the tap's socket."""


def socket_path(settings: Settings, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the daemon binds the tap: the configured path, the runtime directory, or the state directory."""
    if settings.tap.socket:
        return Path(settings.tap.socket)
    runtime = environ.get("RUNTIME_DIRECTORY", "")  # systemd: colon-separated when several are set
    return (Path(runtime.split(":")[0]) if runtime else settings.state_dir) / SOCKET_NAME


# -- the daemon's side --------------------------------------------------------------------


async def start_tap_socket(path: Path, tap: TapHub, state_dir: Path) -> asyncio.Server:
    """Bind the tap's socket (SOCKET_MODE) and start serving; its path is in ``state_dir/tap.address``."""
    sock = await asyncio.to_thread(bind, path)
    handle = connection_handler(lambda reader, writer: _respond(reader, writer, tap), log, "tap viewer")
    server = await asyncio.start_unix_server(handle, sock=sock)
    try:
        await asyncio.to_thread(write_atomic, state_dir / ADDRESS_FILE, f"{path}\n".encode())
    except BaseException:
        server.close()  # reported unavailable: it must not go on serving records, unowned
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    log.info("tap listening on %s (mode %o: root and group %s may tap)", path, SOCKET_MODE, _group_name(path))
    return server


async def serve_tap(server: asyncio.Server, path: Path, tap: TapHub) -> None:
    """Serve until cancelled, then end the viewers' streams, close the server and remove the socket file."""
    try:
        async with server:
            try:
                await server.serve_forever()
            finally:
                # Before the server's exit, which (Python 3.12+) waits for its connections to end:
                # a viewer's connection ends only once its stream does.
                tap.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def bind(path: Path) -> socket.socket:
    """A bound, not yet listening socket at ``path`` with SOCKET_MODE."""
    make_dirs(path.parent)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)  # before listen(): connect() is refused until then
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale(path: Path) -> None:
    """Remove a socket a previous run left behind; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens: left by a daemon that was killed
            return
    raise OSError(f"{path}: another process is serving on it")


async def _respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: TapHub) -> None:
    method, path, query = await read_request(reader)
    if method != "GET" or path != "/tap":
        writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\ntry GET /tap\n")
        await writer.drain()
        return
    pid, uid, _ = _peer(writer)
    log.info("tap viewer connected: uid=%s pid=%s", uid, pid)  # who read record contents, for the journal
    await stream_tap(writer, tap, urllib.parse.parse_qs(query))


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connected process, from the kernel (SO_PEERCRED)."""
    sock: socket.socket = writer.get_extra_info("socket")
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid, gid


async def stream_tap(writer: asyncio.StreamWriter, tap: TapHub, query: dict[str, list[str]]) -> None:
    """Stream enriched records as JSON Lines until the viewer goes away."""
    viewer = tap.subscribe(query.get("tag", []), set(query.get("output", [])))
    try:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
        await writer.drain()
        while data := await viewer.queue.get():  # empty: the end (TapHub.close)
            writer.write(data)
            await writer.drain()
    finally:
        tap.unsubscribe(viewer)


def _group_name(path: Path) -> str:
    """The name of the group owning ``path`` (its number if it has no name)."""
    gid = os.stat(path).st_gid
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# -- the viewer's side (``logferry tap``) -------------------------------------------------


def client_path(settings: Settings) -> Path:
    """The socket of the running daemon: configured, else what it wrote to ``tap.address``, else the default."""
    if settings.tap.socket:
        return Path(settings.tap.socket)
    try:
        written = (settings.state_dir / ADDRESS_FILE).read_text().strip()
    except FileNotFoundError:
        written = ""
    except PermissionError as exc:
        raise _refused(settings.state_dir, exc) from exc
    return Path(written) if written else settings.state_dir / SOCKET_NAME


def view(path: Path, tags: list[str], outputs: list[str], out: BinaryIO) -> None:
    """Print the tap's records to ``out`` until the daemon stops or the viewer is interrupted."""
    query = urllib.parse.urlencode([("tag", t) for t in tags] + [("output", o) for o in outputs])
    with _connect(path) as sock, sock.makefile("rb") as stream:
        sock.sendall(f"GET /tap?{query} HTTP/1.0\r\n\r\n".encode())
        status = stream.readline()
        if b" 200 " not in status:
            raise LogferryError(f"{path}: the daemon answered {status.decode('latin-1').strip()!r}")
        while stream.readline() not in (b"\r\n", b""):
            pass  # headers
        for line in stream:
            out.write(line)
            out.flush()


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except PermissionError as exc:
            raise _refused(path, exc) from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoDaemon(f"no daemon answers at {path}: {exc.strerror}") from exc
        yield sock


def _refused(path: Path, exc: OSError) -> TapRefused:
    """The message for a user who may not tap, with who may and how."""
    try:
        group = _group_name(path)
    except OSError:
        group = "the service's group"
    return TapRefused(f"cannot tap through {path}: {exc.strerror}; only root and members of group {group} may "
                      f"tap (sudo logferry tap, or: sudo usermod -aG {group} \"$USER\", then log in again)")
