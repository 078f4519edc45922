"""sd_notify without a dependency: READY, RELOADING, STATUS, WATCHDOG and STOPPING to $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("logferry.systemd")


class Notifier:
    """Sends state changes to systemd when started by it (Type=notify); does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return bool(self.address)

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram."""
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                # Never block the event loop on a listener that does not read.
                sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
            except BlockingIOError:
                log.debug("sd_notify to %s dropped: the listener is not reading", self.address)
            except OSError as exc:
                log.warning("sd_notify to %s failed: %s", self.address, exc)

    def ready(self, status: str) -> None:
        """Start-up is complete."""
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """A reload has begun; ``ready()`` ends it (systemd holds `systemctl reload` until then)."""
        # MONOTONIC_USEC ties the message to this reload (required by Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def status(self, status: str) -> None:
        """A one-line status for `systemctl status`."""
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """I am alive and not stalled."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1", "STATUS=stopping")
