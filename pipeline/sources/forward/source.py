"""ForwardSource: serve Forward Protocol v1 connections and emit each message as one batch.

Each connection is read by its own handler task, one message at a time: a message
becomes one :class:`~pipeline.sources.base.LineBatch` (its records as JSON lines) and is
handed to ``emit``, which blocks while the pipeline's queues are full. The handler then
reads no more from its socket, so clients feel TCP back-pressure; nothing is dropped.

A message with a ``chunk`` option is acknowledged from the batch's ``on_commit``, which
the committer calls once the records are fsynced in every routed buffer and the chunk
id is fsynced in the source's chunk journal, in the same commit (its commit point, or the
positions' save after it: see :mod:`pipeline.sources.forward.chunks`).

Bad input closes only its own connection (garbage, a truncated or oversized message, a
failed handshake), with a log line naming the peer and the reason; a record that is not
a map, or cannot be stored as JSON, goes to the dead-letter store with the peer and the
reason while the rest of its message is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, cast

import msgpack

from pipeline.deadletter import line_fields
from pipeline.errors import ConfigError
from pipeline.sources.base import Emit, LineBatch, SourceContext
from pipeline.sources.forward.chunks import ChunkJournal, ChunkWindow
from pipeline.sources.forward.codec import Message, ProtocolError, decode, pack, unpacker
from pipeline.sources.forward.config import ForwardSourceConfig
from pipeline.sources.forward.handshake import Handshake
from pipeline.transforms.enrich import iso_millis
from pipeline.transforms.packed import stamped

log = logging.getLogger("logferry.forward")
READ_BYTES = 256 * 1024
ACK_WAIT_SECONDS = 10.0  # how long a client that closed its side may wait for the acks still due
BAD_STREAM = (ProtocolError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
              msgpack.BufferFull)


@dataclass
class ForwardStats:
    """Counters of one forward source (status and /metrics)."""

    connections: int = 0  # open now
    connections_accepted: int = 0
    connections_refused: int = 0  # over max_connections
    records: int = 0  # committed (a PackedForward chunk counts its entries, a dead-lettered one too)
    bytes: int = 0  # received
    acks: int = 0
    resent_chunks: int = 0  # acknowledged again without storing
    refused_handshakes: int = 0
    bad_input: int = 0  # connections closed for bad input


class ForwardSource:
    """Listen for Forward Protocol clients; emit their messages; acknowledge once committed."""

    def __init__(self, name: str, config: ForwardSourceConfig, context: SourceContext) -> None:
        self.name = name
        self.config = config
        self.dead_letters = context.dead_letters
        self.clock = context.clock
        self.time_key = context.time_key
        self.journal = ChunkJournal(context.state_dir / "forward" / name, config.chunk_window, context.clock.time)
        self.window = ChunkWindow(self.journal, context.positions.commit_seq, config.chunk_window,
                                  config.chunk_window_max, context.clock.monotonic() - context.clock.time())
        self.stats = ForwardStats()
        # Bound here, while the topology is built: a port in use or a bad certificate stops the start
        # with an error naming the key, and clients can connect once "logferry running" is logged.
        self._ssl = _tls(name, config)
        try:
            self.shared_key = config.key()  # a key file is read once, at start (and checked at load)
        except ValueError as exc:  # changed since the load
            raise ConfigError(f"sources.{name}.shared_key_file: {exc}") from exc
        self.users = config.passwords(name)  # user_auth: user -> password (files read once, too); else None
        self._tcp, self._udp = _listen(name, config)
        self.address: tuple[str, int] | None = self._tcp.getsockname()[:2]
        log.info("forward source %s listening on %s:%d%s%s", name, *self._tcp.getsockname()[:2],
                 " (TLS)" if self._ssl else "", " (shared_key)" if self.shared_key else "")
        if warning := config.exposure_warning():
            log.warning("forward source %s: %s", name, warning)
        self._stop = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()  # started by the server; awaited in run()
        self._writers: set[asyncio.StreamWriter] = set()

    def stop(self) -> None:
        """Stop accepting and close every connection."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """This source's address and counters, under ``network`` in its status entry."""
        listen = f"{self.address[0]}:{self.address[1]}" if self.address else None
        return {"network": {"listen": listen, **asdict(self.stats)}}

    async def run(self, emit: Emit) -> None:
        """Serve until stopped."""
        self.window.expire(self.clock.monotonic())
        server = await asyncio.start_server(lambda r, w: self._serve(r, w, emit), sock=self._tcp, ssl=self._ssl,
                                            limit=READ_BYTES)
        udp = None
        if self._udp is not None:
            udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(_HeartbeatReply, sock=self._udp)
        try:
            await self._stop.wait()
        finally:
            server.close()
            if udp is not None:
                udp.close()
            await self._close_connections()
            await server.wait_closed()

    async def _close_connections(self) -> None:
        """End every connection; a handler still handing a batch on finishes that first."""
        for writer in list(self._writers):
            writer.transport.abort()  # its reads end; acks still due are dropped, the clients resend
        handlers = list(self._handlers)
        try:
            results = await asyncio.gather(*handlers, return_exceptions=True)
        except asyncio.CancelledError:
            for task in handlers:
                task.cancel()  # past the shutdown deadline: a handler blocked on a full pipeline
            raise
        for result in results:
            if isinstance(result, Exception):
                log.error("forward %s: a connection ended with an unexpected error: %r", self.name, result)

    # -- one connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, emit: Emit) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        if self.stats.connections >= self.config.max_connections or self._stop.is_set():
            self.stats.connections_refused += 1
            log.warning("forward %s: connection from %s refused: max_connections = %d reached", self.name, peer,
                        self.config.max_connections)
            writer.close()
            return
        self._handlers.add(task)
        self._writers.add(writer)
        self.stats.connections += 1
        self.stats.connections_accepted += 1
        try:
            await Connection(self, reader, writer, peer, emit).serve()
        finally:
            self.stats.connections -= 1
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


class Connection:
    """One client connection: handshake, then messages until it closes or misbehaves."""

    def __init__(self, source: ForwardSource, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str, emit: Emit) -> None:
        self.source = source
        self.config = source.config
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.emit = emit
        self.ident = secrets.token_hex(8)  # names the batches of messages without a chunk id
        self.messages = 0
        self.unpacker = unpacker(self.config.message_limit_bytes)
        self.fed = 0  # bytes given to the unpacker
        self.consumed = 0  # bytes of the whole messages it returned
        self.unacked: set[str] = set()  # chunk ids received here and not yet acknowledged
        self._acked = asyncio.Event()

    async def serve(self) -> None:
        """Run the connection; bad input is logged and ends it."""
        try:
            if self.source.shared_key and not await self._handshake():
                return
            while True:
                # What came with the handshake's PING first (a client that does not wait for the PONG).
                for obj in self._messages():
                    self.consumed = self.unpacker.tell()
                    await self._message(obj)
                if (data := await self._read()) is None:
                    break
                self._feed(data)
            if leftover := self.fed - self.consumed:
                self._bad(f"connection closed in the middle of a message ({leftover} bytes discarded)")
            await self._wait_for_acks()
        except BAD_STREAM as exc:
            self._bad(_reason(exc, self.config.message_limit_bytes))
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("forward %s: connection from %s lost: %s", self.source.name, self.peer, exc)

    async def _read(self) -> bytes | None:
        # Never more than the unpacker may hold: a message that fills it is too large.
        room = self.config.message_limit_bytes - (self.fed - self.consumed)
        if room <= 0:
            raise msgpack.BufferFull
        try:
            async with asyncio.timeout(self.config.keepalive_timeout):  # wait_for would make a task per read
                data = await self.reader.read(min(READ_BYTES, room))
        except TimeoutError:
            log.info("forward %s: closing %s, idle for %.0fs", self.source.name, self.peer,
                     self.config.keepalive_timeout)
            return None
        self.source.stats.bytes += len(data)
        return data or None

    async def _wait_for_acks(self) -> None:
        """A client that closes its side after sending (shutdown(SHUT_WR)) still waits for its acks: they go out
        once their chunks are committed (within ``ACK_WAIT_SECONDS``), then the connection is closed. Not at a
        stop, which aborts the connection (the client resends)."""
        deadline = asyncio.get_running_loop().time() + ACK_WAIT_SECONDS
        while self.unacked and not self.writer.is_closing():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), min(left, 0.2))  # 0.2: a stop's abort is seen soon

    def _messages(self) -> Iterator[object]:
        """The whole objects fed so far. A map keyed by an array or a map cannot be decoded (msgpack raises
        TypeError: unhashable), so it is bad input like any other, not an error of the handler."""
        try:
            yield from self.unpacker
        except TypeError as exc:
            raise ProtocolError(f"not a forward message: {exc}") from exc

    def _feed(self, data: bytes) -> None:
        self.unpacker.feed(data)
        self.fed += len(data)

    def _bad(self, reason: str) -> None:
        self.source.stats.bad_input += 1
        log.warning("forward %s: closing connection from %s: %s", self.source.name, self.peer, reason)

    async def _handshake(self) -> bool:
        shake = Handshake.start(self.source.shared_key, self.config.self_hostname, self.source.users)
        self.writer.write(shake.helo())
        ping = await self._next_object()
        if ping is None:
            return False
        ok, reason, pong = shake.check_ping(ping)
        self.writer.write(pong)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        if not ok:
            self.source.stats.refused_handshakes += 1
            log.warning("forward %s: handshake from %s refused: %s", self.source.name, self.peer, reason)
        return ok

    async def _next_object(self) -> object | None:
        while True:
            for obj in self._messages():
                self.consumed = self.unpacker.tell()
                return obj
            data = await self._read()
            if data is None:
                return None
            self._feed(data)

    # -- one message -------------------------------------------------------------------

    async def _message(self, obj: object) -> None:
        message = decode(obj, self.config.chunk_limit_bytes)
        chunk = message.chunk
        window = self.source.window
        if chunk is not None and window.is_committed(chunk):
            self.source.stats.resent_chunks += 1
            self._ack(chunk)
            return
        if chunk is not None and window.wait_for(chunk, lambda: self._ack(chunk)):
            self.source.stats.resent_chunks += 1
            self.unacked.add(chunk)
            return
        batch = self._batch(message)
        if chunk is not None:
            window.begin(chunk)
            self.unacked.add(chunk)
        try:
            await self.emit(batch)
        except BaseException:
            if chunk is not None:
                window.abandon(chunk)
                self.unacked.discard(chunk)
            raise

    def _batch(self, message: Message) -> LineBatch:
        self.messages += 1
        key = message.chunk if message.chunk is not None else f"{self.ident}-{self.messages}"
        path = f"forward://{self.peer}"
        chunk = message.chunk
        journal = None if chunk is None else (self.source.journal, chunk)
        if message.packed is not None:
            # Undecoded: the processor (or a parse worker) frames and decodes it, dead-letters a bad entry with
            # the peer, and sets ``end`` to the entries it found (stored and dead-lettered) before the commit.
            batch = LineBatch(self.source.name, self.config.tag or message.tag, key, path, 0, 0, message.packed,
                              None, journal=journal, packed=True, dead_fields={"peer": self.peer})

            def committed() -> None:
                batch.on_commit = None  # the batch and its callback hold each other: freed now, not by the GC
                self._committed(chunk, batch.end)

            batch.on_commit = committed
            return batch
        now = self.source.clock.time()
        bad: list[tuple[int, bytes, str]] = []
        records = stamped(message.entries, self.source.time_key, bad)  # the rules of packed entries, too
        dead = [self._dead(key, index, shown, reason, now) for index, shown, reason in bad]
        count = len(records)
        # The records go as dicts: the processor enriches and serialises them once (offsets: their indices).
        return LineBatch(self.source.name, self.config.tag or message.tag, key, path, 0, len(message.entries), b"",
                         None, dead=dead, on_commit=lambda: self._committed(chunk, count), journal=journal,
                         records=records)

    def _dead(self, key: str, index: int, shown: bytes, reason: str, now: float) -> dict[str, Any]:
        return {"id": f"{self.source.name}:{key}:{index}", "time": iso_millis(now), "source": self.source.name,
                "path": f"forward://{self.peer}", "peer": self.peer, "offset": index, "reason": reason,
                **line_fields(shown)}

    def _committed(self, chunk: str | None, records: int) -> None:
        source = self.source
        source.stats.records += records
        if chunk is None:
            return
        now = source.clock.monotonic()  # the window's ages: see ChunkWindow
        waiting = source.window.done(chunk, now)
        self._ack(chunk)
        for ack in waiting:
            ack()
        source.window.expire(now)

    def _ack(self, chunk: str) -> None:
        self.unacked.discard(chunk)
        self._acked.set()
        if self.writer.is_closing():
            return  # the client resends on a new connection and is acknowledged there
        self.writer.write(pack({"ack": chunk}))
        self.source.stats.acks += 1


class _HeartbeatReply(asyncio.DatagramProtocol):
    """UDP heartbeat (out_forward ``heartbeat_type udp``): answer each datagram with one zero byte."""

    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector's class does not subclass it

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(b"\0", addr)


def _tls(name: str, config: ForwardSourceConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"sources.{name}.tls_cert: cannot load {config.tls_cert} / {config.tls_key}: {exc}") from exc
    return context


def _listen(name: str, config: ForwardSourceConfig) -> tuple[socket.socket, socket.socket | None]:
    """The listening TCP socket and, with ``heartbeat``, the UDP one on the same port."""
    try:
        family = socket.getaddrinfo(config.bind, config.port, type=socket.SOCK_STREAM)[0][0]
        tcp = socket.create_server((config.bind, config.port), family=family, backlog=1024)
    except OSError as exc:
        raise ConfigError(f"sources.{name}.port: cannot listen on {config.bind}:{config.port}: "
                          f"{exc.strerror or exc}") from exc
    if not config.heartbeat:
        return tcp, None
    udp = socket.socket(family, socket.SOCK_DGRAM)
    try:
        udp.bind(tcp.getsockname()[:2])
    except OSError as exc:
        tcp.close()
        udp.close()
        raise ConfigError(f"sources.{name}.heartbeat: cannot bind UDP {config.bind}:{config.port}: "
                          f"{exc.strerror or exc}") from exc
    return tcp, udp


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)


def _reason(exc: BaseException, limit: int) -> str:
    if isinstance(exc, msgpack.BufferFull):
        return f"message larger than message_limit_bytes = {limit}"
    if isinstance(exc, ProtocolError):
        return str(exc)
    return f"not msgpack ({type(exc).__name__}: {exc})"
