"""Child processes of the daemon (parse workers, the copy guard's helper): ended without polling sleeps."""

from __future__ import annotations

import os
import select
import subprocess


def reap(process: subprocess.Popen[bytes], seconds: float) -> int:
    """Wait up to ``seconds`` for ``process`` to exit, then kill it; reaped either way; its exit code.

    Waits on a pidfd rather than ``Popen.wait(timeout)``, whose polling ``time.sleep`` failed
    with EINVAL under a stepped-back wall clock (libfaketime, tests/chaos/test_clock_steps.py)
    and made the daemon's stop a fatal error.
    """
    if process.poll() is not None:  # reaped already: its pid may be another process's by now
        return process.returncode
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:  # exited and reaped already
        return process.wait()
    try:
        exited, _, _ = select.select([pidfd], [], [], max(0.0, seconds))
    finally:
        os.close(pidfd)
    if not exited:
        process.kill()
    return process.wait()
