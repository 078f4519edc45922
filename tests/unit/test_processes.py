"""reap: a child ends within its time, or is killed; never a polling sleep (the daemon's stop under a stepped clock)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from pipeline.processes import reap


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_child_that_exits_is_reaped_with_its_code() -> None:
    process = child("import sys; sys.exit(3)")
    assert reap(process, 10) == 3
    assert process.returncode == 3


def test_a_child_that_does_not_exit_in_time_is_killed() -> None:
    process = child("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    started = time.monotonic()
    assert reap(process, 0.3) == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_a_child_reaped_already_is_not_waited_for_again() -> None:
    process = child("pass")
    process.wait()
    assert reap(process, 10) == 0
