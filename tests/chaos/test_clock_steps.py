"""The system clock stepping back across an hour boundary under the real daemon (issue 6, item 7).

The unit tests jump a ``FakeClock``; here the real ``logferry run`` process reads a real
``CLOCK_REALTIME`` that the test steps, through libfaketime (Debian's ``faketime``, installed
by ``scripts/setup``):

* ``FAKETIME_TIMESTAMP_FILE`` + ``FAKETIME_NO_CACHE=1``: the daemon re-reads the fake time
  from a file at every clock read, so writing the file steps its clock at once.
* Absolute times (``2026-11-18 11:59:56``, no ``@``): libfaketime's *stopped* clock. The wall
  clock moves only when the test steps it, so every record's ingest time, hence its time key
  and ``ingested_at``, is known to the millisecond, and a window the clock was stepped back
  out of cannot close by the wall clock while the test waits: that is the worst case of a
  backward step, where only the monotonic backstop (``timekey + timekey_wait`` after the
  chunk was created) can flush it. (``@`` start-at times keep the clock running but were
  placed up to a second off when changed at run time; offsets keep it running too, which
  would make time keys depend on how fast the daemon reads.)
* ``FAKETIME_DONT_FAKE_MONOTONIC=1``: an NTP step moves ``CLOCK_REALTIME`` only, never
  ``CLOCK_MONOTONIC``, and the backstop, asyncio's timers and every wait rely on that.
  (libfaketime 0.9.10 then breaks ``time.sleep`` on Python 3.11+ with EINVAL,
  wolfcw/libfaketime#426; the daemon never calls it, asyncio sleeps in ``epoll_wait``.)
* ``NO_FAKE_STAT=1``: file times stay the kernel's, so only the clock is faked (Python's
  ``.pyc`` checks and the buffer's resume order read them).

The hourly time key is shrunk to 5 s (``timekey_wait`` 1 s): the backstop of an hourly key is
an hour of real time. The file output still writes one file per hour (``%Y%m%d-%H``), and the
fake clock crosses 12:00 and is stepped back across it, so "which hour file" is exactly what
an hourly key would decide; a stepped-back record even lands in a 5 s window whose first
chunk was already delivered, as it would with an hourly key.
"""

from __future__ import annotations

import calendar
import contextlib
import glob
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.transforms.enrich import iso_millis
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, Ledger, wait_for

pytestmark = pytest.mark.integration

DAY = (2026, 11, 18)
TIMEKEY, TIMEKEY_WAIT = 5, 1.0
BACKSTOP = TIMEKEY + TIMEKEY_WAIT  # a lazy chunk is flushed this long after its creation, whatever the wall clock
SLACK = 10.0  # commit, flush and polling on a loaded 2-core CI machine
HOUR_11, HOUR_12 = "20261118-11.jsonl", "20261118-12.jsonl"
ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"
LIBRARY_GLOBS = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                 "/usr/local/lib/faketime/libfaketime.so.1")


def at(hms: str) -> float:
    """Epoch seconds of ``hh:mm:ss`` (fractions allowed) UTC on the test's day."""
    hour, minute, second = hms.split(":")
    return calendar.timegm((*DAY, int(hour), int(minute), 0, 0, 0, 0)) + float(second)


def hour_file(epoch: float) -> str:
    """The file output's file for a time key in the hour of ``epoch``."""
    return time.strftime("%Y%m%d-%H.jsonl", time.gmtime(epoch))


def find_libfaketime() -> Path | None:
    """libfaketime's shared object, where Debian (any architecture) or ``make install`` puts it."""
    for pattern in LIBRARY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


class FakeWallClock:
    """The daemon's wall clock, stepped by the test through libfaketime's timestamp file."""

    def __init__(self, library: Path, path: Path) -> None:
        self.library = library
        self.path = path
        self.pids: list[int] = []

    def env(self) -> dict[str, str]:
        """Environment for a process whose ``CLOCK_REALTIME`` is this clock (see module doc)."""
        return {"LD_PRELOAD": str(self.library), "FAKETIME_TIMESTAMP_FILE": str(self.path),
                "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1",
                "TZ": "UTC"}  # libfaketime reads the absolute time as local time

    def set(self, hms: str) -> float:
        """Step the clock to ``hh:mm:ss`` UTC (whole seconds), standing still there; returns the epoch."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n", time.gmtime(at(hms))))
        os.replace(tmp, self.path)  # the daemon reads the file at every clock read: never half of it
        return at(hms)

    def remove_shared_memory(self) -> None:
        """libfaketime's per-process shared memory, which a killed daemon leaves in /dev/shm."""
        for pid in self.pids:
            for name in (f"faketime_shm_{pid}", f"sem.faketime_sem_{pid}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/dev/shm/{name}")


@pytest.fixture
def fake_clock(layout: Layout) -> Iterator[FakeWallClock]:
    """A libfaketime wall clock for the daemon; skipped only where it cannot be installed."""
    library = find_libfaketime()
    if library is None:
        if os.geteuid() != 0:
            pytest.skip("libfaketime is missing and we are not root to install it: apt-get install faketime")
        pytest.fail("libfaketime is missing: scripts/setup installs it as root (apt-get install faketime)")
    clock = FakeWallClock(library, layout.root / "faketime.rc")
    yield clock
    clock.remove_shared_memory()


@dataclass
class Expected:
    """Where a record must arrive and what ingest time it must carry."""

    file: str
    ingested_at: str


class Agent:
    """Appends records to the followed log and remembers where each must land."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.path = layout.logs / "agent.log"
        self.expected: dict[str, Expected] = {}

    def write(self, now: float, untimed: list[str], timed: dict[str, float | str] | None = None) -> None:
        """Append records without an event time (keyed by the ingest time ``now``) and with one."""
        rows: list[dict[str, Any]] = [{"request_id": rid, "input": "no timestamp"} for rid in untimed]
        for rid in untimed:
            self.expected[rid] = Expected(hour_file(now), iso_millis(now))
        for rid, stamp in (timed or {}).items():
            rows.append({"request_id": rid, "input": "own timestamp", "timestamp": stamp})
            event = stamp if isinstance(stamp, float) else calendar.timegm(time.strptime(stamp[:19], ISO_SECONDS))
            self.expected[rid] = Expected(hour_file(event), iso_millis(now))
        with self.path.open("ab") as log:
            log.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))

    def committed(self) -> bool:
        """Whether the daemon has read and time-keyed every line written (its saved position is the end)."""
        return self.layout.saved_offset(self.path) == self.path.stat().st_size

    def arrived(self, prefix: str) -> int:
        """How many records whose request_id starts with ``prefix`` are in the output files."""
        return sum(str(r["request_id"]).startswith(prefix) for r in self.layout.records())


def ids(prefix: str, count: int) -> list[str]:
    """``count`` request_ids starting with ``prefix``."""
    return [f"{prefix}-{n}" for n in range(count)]


def wait_until(daemon: Daemon, predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """``wait_for``, with the daemon's log as it was at the timeout in the failure message."""
    try:
        wait_for(predicate, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; daemon log:\n{daemon.log()[-3000:]}") from None


def test_wall_clock_stepped_back_across_the_hour_keeps_records_in_their_hour_and_strands_no_chunk(
    layout, daemon_factory, fake_clock
):
    layout.write_config(buffer={"flush_mode": "lazy", "timekey": TIMEKEY, "timekey_wait": TIMEKEY_WAIT})
    agent = Agent(layout)
    agent.path.touch()
    now = fake_clock.set("11:59:56")
    daemon = new_daemon(layout, daemon_factory, fake_clock.env()).start()
    assert daemon.proc is not None
    fake_clock.pids.append(daemon.proc.pid)

    # 1. Just before the hour: the 11:59:55 window (11:00 file). Event times may run ahead of the clock.
    agent.write(now, ids("before", 30), {"ahead-0": at("12:00:02.5"), "ahead-1": "2026-11-18T12:00:03Z"})
    wait_until(daemon, agent.committed, 15, "the records before the hour read")

    # 2. The clock crosses 12:00: the 11:59:55 window closes by the wall clock; late events still go
    #    to their own (closed) window, in a new chunk delivered at once.
    now = fake_clock.set("12:00:04")
    agent.write(now, ids("after", 30), {"late-0": at("11:59:58.25"), "late-1": "2026-11-18T11:59:59.500Z"})
    wait_until(daemon, agent.committed, 15, "the records after the hour read")
    wait_until(daemon, lambda: agent.arrived("before-") == 30 and agent.arrived("late-") == 2, BACKSTOP + SLACK,
               "the 11:00 records once the clock passed 12:00")

    # 3. NTP steps the clock back across the hour, into the window delivered in step 2, and it stays
    #    there: neither that window nor 12:00:00's (still staged) can close by the wall clock any more.
    now = fake_clock.set("11:59:57")
    stepped_back = time.monotonic()
    agent.write(now, ids("back", 30), {"back-ts-0": at("12:00:03.25"), "back-ts-1": "2026-11-18T11:30:00.5Z"})
    wait_until(daemon, agent.committed, 15, "the records after the step back read")
    wait_until(daemon, lambda: agent.arrived("back-") == 32 and agent.arrived("after-") == 30
               and agent.arrived("ahead-") == 2, BACKSTOP + SLACK,
               "every chunk, flushed by the monotonic backstop while the wall clock is held back")
    waited = time.monotonic() - stepped_back
    # Nor may the step back flush the new chunk early: a lazy chunk waits for its window to end.
    assert waited >= BACKSTOP, f"records written after the step back arrived after {waited:.1f}s, before the backstop"

    # 4. The clock steps forward again, past the hour: new records are 12:00 records again.
    now = fake_clock.set("12:00:30")
    agent.write(now, ids("forward", 30))
    wait_until(daemon, agent.committed, 15, "the records after the step forward read")
    wait_until(daemon, lambda: agent.arrived("forward-") == 30, BACKSTOP + SLACK, "the records after the step forward")

    # A delivered chunk is deleted just after its records are written; a stranded one never is.
    wait_until(daemon, lambda: not layout.buffered_chunks(), 5, "no chunk left buffered once every record arrived")
    assert daemon.stop() == 0
    Ledger.compare(agent.expected, layout.records()).assert_exact()
    arrived: dict[str, tuple[str, str]] = {}
    for path in sorted(layout.out.iterdir()):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            arrived[record["request_id"]] = (path.name, record["ingested_at"])
    wrong = {rid: (arrived[rid], (want.file, want.ingested_at))
             for rid, want in agent.expected.items() if arrived[rid] != (want.file, want.ingested_at)}
    assert not wrong, f"(file, ingested_at) arrived vs expected: {dict(list(wrong.items())[:5])}"
    assert arrived["back-0"] == (HOUR_11, "2026-11-18T11:59:57.000Z")  # keyed by the stepped-back clock
    assert arrived["back-ts-0"] == (HOUR_12, "2026-11-18T11:59:57.000Z")  # its own event time wins
    assert {file for file, _ in arrived.values()} == {HOUR_11, HOUR_12}
    assert not layout.dead_letters()
