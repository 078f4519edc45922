"""A tiny HTTP/1.0 endpoint on 127.0.0.1 by default: /metrics, /health, /status.

What it serves holds no value taken from a record: counts, configured names (sources,
outputs, tags), followed file paths, and errors with any quoted record value left out.
Any local process can connect to a TCP port, so record contents (the tap) are served on
a Unix socket instead (pipeline/runtime/tap_socket.py).

Hand-rolled on asyncio streams because it serves three fixed paths to local scrapers,
and an owned asyncio server shuts down with the rest of the daemon (prometheus-client's
own server runs an unowned thread).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from pipeline.durability import write_atomic
from pipeline.runtime.metrics import render

log = logging.getLogger("logferry.http")
Snapshot = Callable[[], dict[str, Any]]
Respond = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


async def serve_forever(server: asyncio.Server) -> None:
    """Serve a started endpoint until cancelled, then close it."""
    async with server:
        await server.serve_forever()


async def start_http(listen: str, snapshot: Snapshot, address_file: Path | None = None) -> asyncio.Server:
    """Bind and start answering; the bound address (port 0 picks one) is in ``address_file`` on return."""
    host, _, port = listen.rpartition(":")
    handle = connection_handler(lambda reader, writer: _respond(reader, writer, snapshot), log, "http client")
    server = await asyncio.start_server(handle, host.strip("[]"), int(port))
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    address = f"{bound_host}:{bound_port}"
    if address_file is not None:
        try:
            await asyncio.to_thread(write_address, address_file, address)
        except BaseException:
            server.close()  # reported unavailable: it must not go on answering, unowned
            raise
    log.info("status endpoint listening on http://%s/ (/metrics, /health, /status)", address)
    return server


def write_address(path: Path, address: str) -> None:
    """Replace ``path`` with the address in one step: a reader never sees it empty or half written."""
    write_atomic(path, f"{address}\n".encode())


def connection_handler(respond: Respond, logger: logging.Logger, who: str) -> Respond:
    """Run ``respond`` for one connection and close it; a peer that goes away is no error (debug log)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await respond(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            logger.debug("%s went away: %s", who, exc)
        finally:
            writer.close()

    return handle


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, str]:
    """(method, path, query) of an HTTP/1.0 request; its headers are read and ignored."""
    request = await reader.readuntil(b"\r\n\r\n")
    method, target = (request.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
    path, _, query = target.decode("latin-1").partition("?")
    return method.decode("latin-1"), path, query


async def _respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, snapshot: Snapshot) -> None:
    method, path, _ = await read_request(reader)
    status, ctype, body = route(method, path, snapshot)
    head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


def route(method: str, path: str, snapshot: Snapshot) -> tuple[str, str, bytes]:
    """(status line, content type, body) for a request."""
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET only\n"
    if path == "/metrics":
        return "200 OK", PROMETHEUS, render(snapshot)
    if path == "/status":
        return "200 OK", "application/json", orjson.dumps(snapshot(), option=orjson.OPT_INDENT_2)
    if path == "/health":
        snap = snapshot()
        body = orjson.dumps({"healthy": snap["healthy"], "problems": snap["problems"]})
        return ("200 OK" if snap["healthy"] else "503 Service Unavailable"), "application/json", body
    if path == "/tap":
        return "404 Not Found", "text/plain", b"the tap is served on a Unix socket only: run `logferry tap`\n"
    return "404 Not Found", "text/plain", b"try /metrics, /health or /status\n"
