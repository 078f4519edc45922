"""CopyGuard: while a copier has a followed file open, a helper process reads each write as it lands.

copytruncate (logrotate: open the file, copy it, fsync the copy, ftruncate the file)
destroys the lines written between the end of the copy and the truncate unless they were
read in between. logrotate's window is the copy's fsync: 1-2 ms on this VM, during which
a writer at 5,000 lines/s adds 5-10 lines. The source's event loop reads at every write
then (the pacer's urgent mode), but it cannot read while it runs other work (a 2-3.5 ms
parse of a 500-line batch), and a thread of the daemon waits 0.6-0.8 ms for the GIL while
the loop runs Python code (the previous version of this guard: still 2-9 lines lost in a
run's worst rotation).

So the guard's watching and reading run in a small helper process
(:mod:`~pipeline.sources.tail.guard_helper`), with its own inotify descriptor and its own
GIL. It does not replace the loop's reads: it keeps a copy of the bytes written since the
copier's open, past the source's read position (which the source publishes in a shared
memory after each read, :meth:`CopyGuard.note`), and when the source finds the file
truncated, it takes from the helper what it had not read yet (:meth:`CopyGuard.take`),
read before the truncate.

Costs, by design: no wake-up of the helper while no followed file is open elsewhere (the
directory watches report opens only); while one is, a wake-up per write for
:data:`~pipeline.sources.tail.guard_helper.GUARD_FOR` after the open, or until the truncate.
The daemon's side costs one 8-byte store per read and one message per change of the followed files.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from pipeline.processes import reap
from pipeline.sources.tail.guard_helper import FRAME, SLOT, frame
from pipeline.sources.tail.reader import TailedFile

log = logging.getLogger("logferry.tail")

SLOTS = 4096  # followed files whose read offset the helper can see (the rest are not guarded)
# Seconds for the helper to take a message or answer one; then it is taken for hung and stopped (a
# send with no limit blocked the event loop, and the daemon's stop, once the socket's buffer was full).
TAKE_WAIT = 5.0
CLOSE_WAIT = 5.0  # seconds for the helper to exit at close, then it is killed
HELPER_NICE = -10  # the helper's nice value, if allowed (systemd/logferry.service: LimitNICE=-10)
PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding this `pipeline` package


class CopyGuard:
    """Reads a followed file at every write while someone else has it open (see the module doc).

    The source tells it which files it follows (:meth:`follow`) and how far it has read each
    (:meth:`note`); the helper watches their directories for opens and reads the opened files;
    the source takes what was read when it finds a file truncated (:meth:`take`).
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap  # bytes held beyond what the source has read, per file
        self._lock = threading.Lock()  # one message at a time on the socket (the loop's and workers')
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: socket.socket | None = None
        self._memory: mmap.mmap | None = None
        self._slots: dict[str, int] = {}  # file key → its slot in the shared memory
        self._free = list(range(SLOTS - 1, -1, -1))
        self._sent: tuple[object, ...] | None = None
        self._closed = False

    def follow(self, files: Mapping[str, TailedFile], directories: set[str]) -> None:
        """(The loop.) The files followed at their paths now, and the directories to watch for opens."""
        if self._closed:
            return
        if self._process is None:
            if not directories:
                return
            try:
                self._start()
            except OSError as exc:
                log.warning("copytruncate guard unavailable (%s): lines written during a copy may be lost", exc)
                self._stop_helper()
                self._closed = True
                return
        keys = {tf.key for tf in files.values()}
        for key in self._slots.keys() - keys:
            self._free.append(self._slots.pop(key))
        spec: list[str | int] = []
        for path, tf in sorted(files.items()):
            slot = self._slots.get(tf.key)
            if slot is None:
                if not self._free:
                    continue
                slot = self._slots[tf.key] = self._free.pop()
            # Every time, not only for a new slot: a file truncated (read from 0 again) or a reused
            # inode (another file, same key) keeps its slot, and until its next read the slot held
            # the old content's offset, past what is unread now: the helper kept nothing of it.
            # Before the helper learns the slot or the new fingerprint.
            self.note(tf)
            spec += [path, tf.key, tf.fp, tf.fp_len, slot]
        message = ("follow", len(spec) // 5, *spec, *sorted(directories))
        if message != self._sent:
            self._send(frame(*message))
            self._sent = message

    def note(self, tf: TailedFile) -> None:
        """(Any thread.) ``tf`` has been read to ``tf.offset``: the helper need not keep what lies before."""
        slot = self._slots.get(tf.key)
        if slot is not None and self._memory is not None:
            SLOT.pack_into(self._memory, slot * SLOT.size, tf.offset)

    def take(self, tf: TailedFile, offset: int) -> bytes:
        """(Any thread; the source's, for ``tf``.) Whole lines read from ``offset`` on, ``tf``'s
        content as fingerprinted now; the guard lets go of the file."""
        return self._ask(frame("take", tf.key, tf.fp, tf.fp_len, offset))

    def _ask(self, message: bytes) -> bytes:
        """Send the framed ``message``, return the helper's answer (``b""`` without a helper)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return b""
            try:
                conn.settimeout(TAKE_WAIT)
                conn.sendall(message)
                return _receive(conn, FRAME.unpack(_receive(conn, FRAME.size))[0])
            except (OSError, EOFError) as exc:  # TimeoutError: no answer within TAKE_WAIT
                self._conn = None  # under the lock: the first to fail says it, once
                error: BaseException = exc
        self._fail(conn, error)
        return b""

    def guarded(self) -> dict[str, int]:
        """(Any thread.) The files the helper reads at every write now, by key, and the offset each is
        read to (for tests and diagnostics)."""
        lines = self._ask(frame("guarded")).decode().splitlines()
        return {key: int(end) for key, end in (line.rsplit(" ", 1) for line in lines)}

    def close(self) -> None:
        """(The loop.) Stop the helper (it exits at its socket's end), release the shared memory."""
        self._closed = True
        self._stop_helper()
        if self._memory is not None:
            self._memory.close()
            self._memory = None

    # -- the helper process ---------------------------------------------------------------

    def _start(self) -> None:
        size = SLOTS * SLOT.size
        memory_fd = os.memfd_create("logferry-guard", os.MFD_CLOEXEC)  # pass_fds gives it to the helper
        try:
            os.ftruncate(memory_fd, size)
            self._memory = mmap.mmap(memory_fd, size)
            ours, theirs = socket.socketpair()
            with ours, theirs:
                # -P and the daemon's own package root: the helper runs this very code, whatever the cwd holds.
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT,
                                                                                   os.environ.get("PYTHONPATH")]))}
                self._process = subprocess.Popen(
                    [sys.executable, "-P", "-m", "pipeline.sources.tail.guard_helper", str(theirs.fileno()),
                     str(memory_fd), str(size), str(self._cap)],
                    pass_fds=(theirs.fileno(), memory_fd), stdin=subprocess.DEVNULL, env=env,
                )
                self._conn = socket.socket(fileno=os.dup(ours.fileno()))
            self._raise_priority(self._process.pid)
        finally:
            os.close(memory_fd)  # the helper and our map hold it now

    @staticmethod
    def _raise_priority(pid: int) -> None:
        """Put the helper ahead of the writers and the daemon when the system allows it (root,
        CAP_SYS_NICE, or systemd's ``LimitNICE=-10``), as it must read a write within the copy's
        fsync: with both cores busy it lost up to 25 lines in a rotation at the daemon's priority,
        at most 9 ahead of it (``tools/chaos.py --only rotate-copytruncate``, two busy loops)."""
        try:
            os.setpriority(os.PRIO_PROCESS, pid, HELPER_NICE)
        except OSError as exc:
            log.info("copytruncate guard runs at the daemon's priority (nice %d refused: %s)", HELPER_NICE, exc)

    def _send(self, message: bytes) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            try:
                conn.settimeout(TAKE_WAIT)
                conn.sendall(message)
                return
            except OSError as exc:  # TimeoutError: the helper took nothing within TAKE_WAIT
                self._conn = None  # under the lock: the first to fail says it, once
                error = exc
        self._fail(conn, error)

    def _fail(self, conn: socket.socket, exc: BaseException) -> None:
        """The helper is gone or hung: say it (once: the caller took the socket away), stop it."""
        log.error("copytruncate guard stopped (%s: %s): lines written during a copy may be lost",
                  type(exc).__name__, exc)
        conn.close()
        self._closed = True
        self._stop_helper()  # the shared memory stays mapped until close(): the loop may be storing an offset

    def _stop_helper(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            process, self._process = self._process, None
        if conn is not None:
            conn.close()  # the helper leaves at the socket's end (no message: a hung helper's buffer may be full)
        if process is not None:
            reap(process, CLOSE_WAIT)


def _receive(conn: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``conn`` (within its timeout for each piece); EOFError at its end."""
    data = bytearray()
    while len(data) < size:
        piece = conn.recv(size - len(data))
        if not piece:
            raise EOFError("the helper closed its socket")
        data += piece
    return bytes(data)
