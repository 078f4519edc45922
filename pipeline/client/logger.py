"""Writers of interaction records: :class:`InteractionLogger`, its async twin and the default logger.

Durability and concurrency model
--------------------------------
A record is encoded to one line of bytes and handed to the kernel with a single ``os.write`` on a file
descriptor opened with ``O_WRONLY | O_APPEND | O_CREAT``. With ``O_APPEND`` the kernel moves to the end of
file and writes atomically with respect to other appenders, so lines from any number of threads and
processes, each with their own descriptor, never interleave. On Linux a write to a regular file returns
short only when the disk fills up, a file-size limit is hit, a signal interrupts a huge write, or the
size exceeds 0x7ffff000 bytes; the loop that finishes a short write exists for those cases only (the
tail of such a line may then interleave, exactly as with any other writer). Pipes/FIFOs are atomic only
up to PIPE_BUF (4096) bytes.

Like :class:`logging.handlers.WatchedFileHandler`, the path is stat'ed before writing (every call by
default, or at most every ``stat_interval`` seconds) and reopened when it disappeared or now names
another file (different device/inode), so ``logrotate`` in ``create`` mode (rename + create) needs no
signal: lines written before the reopen land in the rotated file, the rest in the new one, none lost.
Do not use ``copytruncate``: lines written between the copy and the truncation are lost by design.

No error ever propagates to the caller: failures are counted in ``errors`` (the last one kept in
``last_error``) and the first is reported as a warning on the ``logferry.client`` stdlib logger.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol, Self

from .encoding import encode_line
from .usage import usage_from

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "AsyncInteractionLogger",
    "InteractionLogger",
    "Writable",
    "build_record",
    "configure",
    "get_logger",
    "log_interaction",
]

DEFAULT_PATH = "/var/log/ai-agent/agent.log"
"""Where the default logger writes when neither :func:`configure` nor ``$LOGFERRY_AGENT_LOG`` says."""
ENV_VAR = "LOGFERRY_AGENT_LOG"
"""Environment variable naming the default logger's file."""
RECORD_TYPE = "llm_interaction"

_log = logging.getLogger("logferry.client")
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK


class Writable(Protocol):
    """Anything with a ``write`` method: text streams get str lines, binary streams get bytes."""

    def write(self, data: Any, /) -> object:
        """Write one chunk."""
        ...


def build_record(
    input: Any,
    output: Any,
    model: str | None,
    tokens: Any = None,
    latency_ms: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build the record dict the daemon expects (see :meth:`InteractionLogger.log_interaction`)."""
    usage: dict[str, int | None] = {"prompt_tokens": None, "completion_tokens": None, "tokens": None}
    if isinstance(tokens, int) and not isinstance(tokens, bool):
        usage["tokens"] = tokens
    elif tokens is not None:
        usage = usage_from(tokens)
    prompt = extra.pop("prompt_tokens", None)
    completion = extra.pop("completion_tokens", None)
    prompt = usage["prompt_tokens"] if prompt is None else prompt
    completion = usage["completion_tokens"] if completion is None else completion
    total = usage["tokens"]
    if total is None and isinstance(prompt, int) and isinstance(completion, int):
        total = prompt + completion
    timestamp = extra.pop("timestamp", None)
    if isinstance(timestamp, dt.datetime):
        timestamp = timestamp.timestamp()
    request_id = extra.pop("request_id", None)
    record: dict[str, Any] = {
        "type": RECORD_TYPE,
        "request_id": uuid.uuid4().hex if request_id is None else request_id,
        "timestamp": time.time() if timestamp is None else timestamp,
        "model": model,
        "input": input,
        "output": output,
        "tokens": total,
    }
    if prompt is not None:
        record["prompt_tokens"] = prompt
    if completion is not None:
        record["completion_tokens"] = completion
    record["latency_ms"] = float(latency_ms) if isinstance(latency_ms, int | float) else latency_ms
    record.update(extra)
    return record


_live: weakref.WeakSet[InteractionLogger] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay locked forever in the child.
    for logger in list(_live):
        logger._lock = threading.Lock()
        logger._err_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class InteractionLogger:
    """Append interaction records as JSON lines to a file (or a stream), safely from threads and processes.

    ``InteractionLogger("/var/log/ai-agent/agent.log")`` opens lazily, creates missing parent directories
    and the file (mode ``0o640`` minus the umask), and reopens after rotation. Given a stream (any object
    with ``write``), it writes each line under a lock and flushes; the stream is not closed by
    :meth:`close`. Usable as a context manager. Never raises from logging: see ``errors``.
    """

    errors: int
    """Number of records that could not be written (or built); never reset."""
    last_error: BaseException | None
    """The most recent failure, for diagnostics."""

    def __init__(
        self,
        path_or_stream: str | os.PathLike[str] | Writable,
        *,
        stat_interval: float = 0.0,
        mode: int = 0o640,
        make_dirs: bool = True,
    ) -> None:
        """Target a file path (str or path-like) or a writable stream.

        ``stat_interval``: seconds between rotation checks (0 = before every write, the default; a stat
        costs about a microsecond). ``mode``: permissions of a newly created file. ``make_dirs``: create
        missing parent directories (mode 0o755 minus umask).
        """
        self._lock = threading.Lock()
        self._err_lock = threading.Lock()
        self.errors = 0
        self.last_error = None
        self._reported = False
        self._closed = False
        self._fd: int | None = None
        self._devino: tuple[int, int] = (0, 0)
        self._next_check = 0.0
        self._stat_interval = stat_interval
        self._mode = mode
        self._make_dirs = make_dirs
        self._stream: Writable | None = None
        self._binary = False
        self._path: str | None = None
        if isinstance(path_or_stream, str | os.PathLike):
            self._path = os.path.abspath(os.fspath(path_or_stream))
        else:
            self._stream = path_or_stream
            self._binary = _is_binary(path_or_stream)
        _live.add(self)

    @property
    def path(self) -> str | None:
        """Absolute path written to, or None for a stream."""
        return self._path

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def log_interaction(
        self,
        /,
        input: Any,
        output: Any,
        model: str | None,
        tokens: Any = None,
        latency_ms: float | None = None,
        **extra: Any,
    ) -> str:
        """Write one ``llm_interaction`` record; return its request_id. Never raises.

        The line holds ``type``, ``request_id`` (uuid4 hex unless given in ``extra``), ``timestamp``
        (epoch seconds, now unless given as float or datetime), ``model``, ``input``, ``output``,
        ``tokens`` (total or null), ``prompt_tokens``/``completion_tokens`` when known, ``latency_ms``
        and every ``extra`` field. ``tokens`` may be an int total, an SDK response, its ``usage`` object
        or a :func:`usage_from` dict; ``prompt_tokens=``/``completion_tokens=`` may also be given directly.
        """
        try:
            record = build_record(input, output, model, tokens, latency_ms, **extra)
        except Exception as exc:  # noqa: BLE001 - logging must never break the service
            self._report(exc)
            return ""
        self.write_record(record)
        return str(record["request_id"])

    def write_record(self, record: Mapping[str, Any]) -> bool:
        """Encode and write one prebuilt record as one line; return False (and count) on failure."""
        try:
            self._write(encode_line(record))
        except Exception as exc:  # noqa: BLE001 - logging must never break the service
            self._report(exc)
            return False
        return True

    def close(self) -> None:
        """Close the file descriptor (a stream is flushed, not closed). Later writes count as errors."""
        with self._lock:
            self._closed = True
            self._close_fd()
            if self._stream is not None:
                _flush(self._stream)

    def __enter__(self) -> Self:
        """Return self."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close."""
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        target = self._path if self._path is not None else repr(self._stream)
        return f"<{type(self).__name__} {target} errors={self.errors}>"

    # -- internals -----------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("InteractionLogger is closed")
            if self._stream is not None:
                self._stream.write(data if self._binary else data.decode("utf-8"))
                _flush(self._stream)
                return
            fd = self._ensure_open()
            try:
                view = memoryview(data)
                while view:  # one iteration unless the kernel short-writes (see module docstring)
                    written = os.write(fd, view)
                    if written <= 0:
                        raise OSError(f"os.write wrote {written} bytes")
                    view = view[written:]
            except OSError:
                self._close_fd()  # reopen on the next call
                raise

    def _ensure_open(self) -> int:
        assert self._path is not None
        if self._fd is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + self._stat_interval
                try:
                    st = os.stat(self._path)
                    moved = (st.st_dev, st.st_ino) != self._devino
                except (FileNotFoundError, NotADirectoryError):
                    moved = True
                if moved:
                    self._close_fd()
        if self._fd is None:
            if self._make_dirs:
                os.makedirs(os.path.dirname(self._path), mode=0o755, exist_ok=True)
            fd = os.open(self._path, _OPEN_FLAGS, self._mode)
            try:
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
            self._fd, self._devino = fd, (st.st_dev, st.st_ino)
            self._next_check = time.monotonic() + self._stat_interval
        return self._fd

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _report(self, exc: BaseException) -> None:
        with self._err_lock:
            self.errors += 1
            self.last_error = exc
            first, self._reported = not self._reported, True
        if first:
            try:
                _log.warning(
                    "cannot write interaction record to %s: %s: %s "
                    "(the record is dropped; further failures are only counted in .errors)",
                    self._path if self._path is not None else repr(self._stream),
                    type(exc).__name__,
                    exc,
                )
            except Exception:  # noqa: BLE001 - reporting must not fail either
                pass


def _is_binary(stream: object) -> bool:
    if isinstance(stream, io.TextIOBase):
        return False
    if isinstance(stream, io.RawIOBase | io.BufferedIOBase):
        return True
    return "b" in str(getattr(stream, "mode", ""))


def _flush(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if callable(flush):
        flush()


class AsyncInteractionLogger:
    """Asyncio front end of :class:`InteractionLogger`: writes run on one background thread it owns.

    ``await log_interaction(...)`` never blocks the event loop and returns once the line is written (a
    cancelled caller does not un-write it). Records keep the order of the calls. :meth:`submit` is the
    fire-and-forget form usable from sync code. Close with ``await aclose()`` or ``async with``.
    """

    def __init__(self, target: str | os.PathLike[str] | Writable | InteractionLogger, **kwargs: Any) -> None:
        """Wrap an existing :class:`InteractionLogger` (not closed by :meth:`aclose`) or build one from
        a path or stream and ``kwargs`` (closed by :meth:`aclose`)."""
        self._owns = not isinstance(target, InteractionLogger)
        self.logger = target if isinstance(target, InteractionLogger) else InteractionLogger(target, **kwargs)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="logferry-client")
        self._closed = False

    @property
    def errors(self) -> int:
        """Failures so far (of the underlying logger)."""
        return self.logger.errors

    async def log_interaction(
        self,
        /,
        input: Any,
        output: Any,
        model: str | None,
        tokens: Any = None,
        latency_ms: float | None = None,
        **extra: Any,
    ) -> str:
        """Like :meth:`InteractionLogger.log_interaction`, written off the event loop. Never raises."""
        try:
            record = build_record(input, output, model, tokens, latency_ms, **extra)
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self.logger.write_record, record
            )
        except Exception as exc:  # noqa: BLE001 - includes "cannot schedule new futures after shutdown"
            self.logger._report(exc)
            return ""
        await future
        return str(record["request_id"])

    def submit(
        self,
        /,
        input: Any,
        output: Any,
        model: str | None,
        tokens: Any = None,
        latency_ms: float | None = None,
        **extra: Any,
    ) -> str:
        """Queue a record for the background thread without waiting; return its request_id."""
        try:
            record = build_record(input, output, model, tokens, latency_ms, **extra)
            self._executor.submit(self.logger.write_record, record)
        except Exception as exc:  # noqa: BLE001 - logging must never break the service
            self.logger._report(exc)
            return ""
        return str(record["request_id"])

    async def aclose(self) -> None:
        """Wait for queued records, stop the thread and close the file if this object opened it."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=False)  # the worker is idle now and exits at once

    def close(self) -> None:
        """Blocking form of :meth:`aclose` for sync code."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self._close_sync()

    def _close_sync(self) -> None:
        if self._owns:
            self.logger.close()

    async def __aenter__(self) -> Self:
        """Return self."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Await :meth:`aclose`."""
        await self.aclose()


_default: InteractionLogger | None = None
_default_lock = threading.Lock()


def configure(
    path_or_stream: str | os.PathLike[str] | Writable | None = None, **kwargs: Any
) -> InteractionLogger:
    """Set (and return) the default logger used by the module-level :func:`log_interaction`.

    ``None`` means ``$LOGFERRY_AGENT_LOG`` or else ``/var/log/ai-agent/agent.log``. ``kwargs`` go to
    :class:`InteractionLogger`. The previous default logger is closed.
    """
    global _default
    if path_or_stream is None:
        path_or_stream = os.environ.get(ENV_VAR) or DEFAULT_PATH
    logger = InteractionLogger(path_or_stream, **kwargs)
    with _default_lock:
        previous, _default = _default, logger
    if previous is not None:
        previous.close()
    return logger


def get_logger() -> InteractionLogger:
    """The default logger, created from ``$LOGFERRY_AGENT_LOG`` or the default path on first use."""
    global _default
    logger = _default
    if logger is None:
        with _default_lock:
            if _default is None:
                _default = InteractionLogger(os.environ.get(ENV_VAR) or DEFAULT_PATH)
            logger = _default
    return logger


def log_interaction(
    input: Any,
    output: Any,
    model: str | None,
    tokens: Any = None,
    latency_ms: float | None = None,
    **extra: Any,
) -> str:
    """Write one record with the default logger (see :meth:`InteractionLogger.log_interaction`)."""
    return get_logger().log_interaction(input, output, model, tokens, latency_ms, **extra)
