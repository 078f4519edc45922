"""What each thread of a process is doing, sampled from outside it (``/proc``), for ``profile_waits.py``.

Every sample reads, for each thread of the process, its scheduler state (``stat``) and the
system call it is blocked in (``syscall``: ``running`` when it is on a core or waiting for
one). Reading from another process costs the sampled one nothing: no signal, no GIL. The
thread's exact on-CPU and run-queue (waiting for a free core) nanoseconds come from
``schedstat`` at the start and end of the window. Linux only; syscall names are x86_64's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

# x86_64 system call numbers → what a thread blocked in one is waiting for.
SYSCALLS: dict[int, str] = {
    232: "idle (epoll)", 281: "idle (epoll)", 7: "idle (epoll)",
    202: "futex",  # the GIL, or an idle worker's queue: told apart by what the thread was running
    74: "fsync", 75: "fsync",
    0: "read", 17: "read", 19: "read", 295: "read", 327: "read",
    1: "write", 18: "write", 20: "write", 296: "write", 328: "write",
    326: "copy_file_range",
    2: "metadata", 3: "metadata", 76: "metadata", 77: "metadata", 82: "metadata", 87: "metadata",
    257: "metadata", 263: "metadata", 264: "metadata", 316: "metadata", 4: "metadata", 5: "metadata",
    262: "metadata", 332: "metadata",
    35: "sleep", 230: "sleep",
}
RUNNING = -1


@dataclass
class Sample:
    """One thread at one instant."""

    at: float
    tid: int
    state: str  # R, S, D, ...
    syscall: int  # RUNNING when on a core or waiting for one


@dataclass
class ThreadSampler:
    """Samples every thread of ``pid``; ``begin``/``end`` bracket the measured window."""

    pid: int
    samples: list[Sample] = field(default_factory=list)
    rounds: int = 0
    sched_begin: dict[int, tuple[int, int]] = field(default_factory=dict)
    sched_end: dict[int, tuple[int, int]] = field(default_factory=dict)
    machine_begin: list[int] = field(default_factory=list)  # /proc/stat "cpu" line, ticks
    machine_end: list[int] = field(default_factory=list)
    _fds: dict[int, tuple[int, int]] = field(default_factory=dict)

    def begin(self) -> None:
        """Note every thread's scheduler totals now (threads that start later begin at zero)."""
        self.refresh()
        self.sched_begin = self.schedstat()
        self.machine_begin = machine_ticks()

    def end(self) -> None:
        """Note the totals again and let go of the /proc files."""
        self.sched_end = self.schedstat()
        self.machine_end = machine_ticks()
        for stat, syscall in self._fds.values():
            os.close(stat)
            os.close(syscall)
        self._fds.clear()

    def refresh(self) -> None:
        """Open the /proc files of threads that appeared since the last call."""
        for name in os.listdir(f"/proc/{self.pid}/task"):
            tid = int(name)
            if tid not in self._fds:
                try:
                    base = f"/proc/{self.pid}/task/{tid}"
                    self._fds[tid] = (os.open(f"{base}/stat", os.O_RDONLY), os.open(f"{base}/syscall", os.O_RDONLY))
                except OSError:  # ended meanwhile
                    continue

    def sample(self) -> None:
        """One sample of every known thread."""
        at = time.perf_counter()
        self.rounds += 1
        for tid, (stat_fd, syscall_fd) in list(self._fds.items()):
            try:
                stat = os.pread(stat_fd, 512, 0)
                syscall = os.pread(syscall_fd, 128, 0)
            except OSError:  # the thread ended
                os.close(stat_fd)
                os.close(syscall_fd)
                del self._fds[tid]
                continue
            if not stat:
                continue
            state = stat.rsplit(b")", 1)[1].split(None, 1)[0].decode()
            first = syscall.split(None, 1)[0] if syscall.strip() else b"running"
            number = RUNNING if not first.lstrip(b"-").isdigit() else int(first)
            self.samples.append(Sample(at, tid, state, number))

    def schedstat(self) -> dict[int, tuple[int, int]]:
        """On-CPU and run-queue nanoseconds of every live thread."""
        found: dict[int, tuple[int, int]] = {}
        for name in os.listdir(f"/proc/{self.pid}/task"):
            try:
                run, wait, _ = open(f"/proc/{self.pid}/task/{name}/schedstat").read().split()
            except (OSError, ValueError):
                continue
            found[int(name)] = (int(run), int(wait))
        return found

    def machine_window(self) -> dict[str, float]:
        """The machine over the window, CPU seconds summed over its cores: busy (every process, this
        one included), idle, and steal (time the hypervisor gave our virtual cores to someone else)."""
        ticks = os.sysconf("SC_CLK_TCK")
        delta = [(b - a) / ticks for a, b in zip(self.machine_begin, self.machine_end, strict=True)]
        user, nice, system, idle, iowait, irq, softirq, steal = delta
        return {"busy_s": user + nice + system + irq + softirq, "idle_s": idle + iowait, "steal_s": steal}

    def window(self) -> dict[int, tuple[float, float]]:
        """Per thread: seconds on a core, seconds waiting for one, between ``begin`` and ``end``."""
        spent = {}
        for tid, (run, wait) in self.sched_end.items():
            run0, wait0 = self.sched_begin.get(tid, (0, 0))
            spent[tid] = ((run - run0) / 1e9, (wait - wait0) / 1e9)
        return spent


def machine_ticks() -> list[int]:
    """The whole machine's CPU ticks so far: user nice system idle iowait irq softirq steal (/proc/stat)."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


def kind(syscall: int) -> str:
    """What a thread in ``syscall`` waits for (``running``, ``futex``, ``fsync``, ...)."""
    if syscall == RUNNING:
        return "running"
    return SYSCALLS.get(syscall, f"syscall {syscall}")
