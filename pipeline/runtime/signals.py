"""Signals express intent; handlers only set flags or call the owner's request methods."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("logferry.signals")


class SignalIntents:
    """SIGTERM/SIGINT → stop (a second one: stop now); SIGUSR1 → flush; SIGHUP → reload; SIGUSR2 → dump tasks."""

    def __init__(self, on_flush: Callable[[], None]) -> None:
        self.stop = asyncio.Event()
        self.quit = asyncio.Event()
        self.reload = asyncio.Event()
        self._on_flush = on_flush
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        """Register the handlers on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGTERM, self._stop, "SIGTERM")
        self._loop.add_signal_handler(signal.SIGINT, self._stop, "SIGINT")
        self._loop.add_signal_handler(signal.SIGUSR1, self._flush)
        self._loop.add_signal_handler(signal.SIGHUP, self._reload)
        self._loop.add_signal_handler(signal.SIGUSR2, dump_tasks)

    def remove(self) -> None:
        """Unregister the handlers."""
        if self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2):
                self._loop.remove_signal_handler(sig)

    def _stop(self, name: str) -> None:
        if self.stop.is_set():
            log.warning("%s again: stopping now without waiting for the deadline", name)
            self.quit.set()
            return
        log.info("%s: stopping (sources first, then a flush of what is read)", name)
        self.stop.set()

    def _flush(self) -> None:
        log.info("SIGUSR1: flushing every buffer now")
        self._on_flush()

    def _reload(self) -> None:
        log.info("SIGHUP: reloading the configuration")
        self.reload.set()


def dump_tasks() -> None:
    """Log every task's stack (SIGUSR2: what is the daemon waiting on?)."""
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(file=out)
        log.warning("task %s:\n%s", task.get_name(), out.getvalue())
