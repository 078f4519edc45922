"""A tiny HTTP/1.0 endpoint on 127.0.0.1 by default: /metrics, /health, /status, /tap.

Hand-rolled on asyncio streams because it serves three fixed paths to local scrapers,
and an owned asyncio server shuts down with the rest of the daemon (prometheus-client's
own server runs an unowned thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from pipeline.runtime.metrics import render
from pipeline.runtime.tap import TapHub

log = logging.getLogger("logferry.http")
Snapshot = Callable[[], dict[str, Any]]
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


async def serve_forever(server: asyncio.Server) -> None:
    """Serve a started endpoint until cancelled, then close it."""
    async with server:
        await server.serve_forever()


async def start_http(
    listen: str, snapshot: Snapshot, address_file: Path | None = None, tap: TapHub | None = None
) -> asyncio.Server:
    """Bind and start answering; the bound address (port 0 picks one) is in ``address_file`` on return."""
    host, _, port = listen.rpartition(":")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _respond(reader, writer, snapshot, tap)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            log.debug("http client went away: %s", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host.strip("[]"), int(port))
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    address = f"{bound_host}:{bound_port}"
    if address_file is not None:
        await asyncio.to_thread(write_address, address_file, address)
    log.info("status endpoint listening on http://%s/ (/metrics, /health, /status)", address)
    return server


def write_address(path: Path, address: str) -> None:
    """Replace ``path`` with the address in one step: a reader never sees it empty or half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(address + "\n")
    os.replace(tmp, path)


async def _respond(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, snapshot: Snapshot, tap: TapHub | None
) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    method, target = (request.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
    path, _, query = target.decode("latin-1").partition("?")
    if path == "/tap" and tap is not None and method == b"GET":
        await _stream_tap(writer, tap, parse_qs(query))
        return
    status, ctype, body = route(method.decode("latin-1"), path, snapshot)
    head = f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


async def _stream_tap(writer: asyncio.StreamWriter, tap: TapHub, query: dict[str, list[str]]) -> None:
    """Stream enriched records as JSON Lines until the viewer goes away."""
    viewer = tap.subscribe(query.get("tag", []), set(query.get("output", [])))
    try:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n")
        await writer.drain()
        while True:
            writer.write(await viewer.queue.get())
            await writer.drain()
    finally:
        tap.unsubscribe(viewer)


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
    return "404 Not Found", "text/plain", b"try /metrics, /health or /status\n"
