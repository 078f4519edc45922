"""CopyGuard: while a copier has a followed file open, a thread reads each write as it lands.

copytruncate (logrotate: open the file, copy it, fsync the copy, ftruncate the file)
destroys the lines written between the end of the copy and the truncate unless they were
read in between. logrotate's window is the copy's fsync: 1-2 ms on this VM, during which
a writer at 5,000 lines/s adds 5-10 lines. The source's event loop reads at every write
then (the pacer's urgent mode), but it cannot read while it runs other work: in 20
rotations (``tools/chaos.py --only rotate-copytruncate``, instrumented), the rotations that
lost 8 and 9 lines were those whose window fell into a 2-3.5 ms parse of a 500-line batch
on the same loop; every other rotation lost 0-2.

So the guard reads from its own thread, woken by its own inotify descriptor, which needs
the GIL only (the loop thread is made to yield it within the switch interval), not a turn
of the event loop. It does not replace the loop's reads: it keeps a copy of the bytes
written since the copier's open, and when the source finds the file truncated, it takes
from the guard what it had not read yet (:meth:`CopyGuard.take`), read before the truncate.

Costs, by design: no thread wake-up while no followed file is open elsewhere (the
directory watches report opens only); while one is, a wake-up per write for
:data:`GUARD_FOR` after the open, or until the truncate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import inotify_simple

from pipeline.sources.tail.reader import TailedFile, fingerprint

log = logging.getLogger("logferry.tail")

_F = inotify_simple.flags
OPENS = int(_F.OPEN | _F.ONLYDIR)
WRITES = int(_F.MODIFY)
GUARD_FOR = 1.0  # seconds of reading at every write after a foreign open (the copy, its fsync, the truncate)
KEEP_FOR = 5.0  # seconds the bytes read before a truncate wait for the source to take them
REOPENS = 20  # opens within GUARD_FOR that mark a writer opening the file for each write (not a copier)
PIECE = 64 * 1024  # bytes per read: a few writes' worth at most, so no large buffer per read
# Files guarded at once. Each holds a descriptor beyond the source's max_open_files, and a writer
# that opens many followed files (one open per file and round) would otherwise have them all
# guarded for a second: 70 descriptors against max_open_files = 40 in test_many_files. logrotate
# copies one file at a time.
MAX_TARGETS = 2


@dataclass
class _Target:
    """One guarded file: its bytes from ``base`` on, read through a descriptor of our own."""

    tf: TailedFile
    fd: int
    wd: int
    fp: str
    fp_len: int
    base: int
    until: float
    data: bytearray = field(default_factory=bytearray)
    done: bool = False  # truncated, replaced or over the cap: nothing more is read
    opens: int = 1

    @property
    def end(self) -> int:
        return self.base + len(self.data)


class CopyGuard:
    """Reads a followed file at every write while someone else has it open (see the module doc).

    The source's loop tells it which files it follows (:meth:`follow`); the guard's thread
    watches their directories for opens and reads the opened files; the source takes what
    was read when it finds a file truncated (:meth:`take`).
    """

    def __init__(self, cap: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cap = cap  # bytes held beyond what the source has read, per file
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._inotify: inotify_simple.INotify | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._closed = False
        self._followed: Mapping[str, TailedFile] = {}  # path → file; replaced whole by the loop
        self._directories: dict[str, int] = {}  # directory → watch descriptor
        self._wanted: set[str] = set()
        self._watched: dict[int, str] = {}
        self._targets: dict[str, _Target] = {}  # by file key
        self._by_wd: dict[int, _Target] = {}
        self._muted: dict[str, float] = {}  # directory → until when its opens are not watched

    def follow(self, files: Mapping[str, TailedFile], directories: set[str]) -> None:
        """(The loop.) The files followed at their paths now, and the directories to watch for opens."""
        self._followed = dict(files)
        if self._closed:
            return
        with self._lock:
            if self._inotify is None:
                if not directories:
                    return
                try:
                    self._start()
                except OSError as exc:
                    log.warning("copytruncate guard unavailable (%s): lines written during a copy may be lost", exc)
                    self._closed = True
                    return
            for directory in directories - self._directories.keys() - self._muted.keys():
                self._watch_directory(directory)
            for directory in self._directories.keys() - directories:
                self._unwatch_directory(directory)
            self._wanted = set(directories)
            for key in [k for k, t in self._targets.items() if files.get(t.tf.path) is not t.tf]:
                self._drop(key)

    def take(self, tf: TailedFile, offset: int) -> bytes:
        """(Any thread; the source's, for ``tf``.) Whole lines read from ``offset`` on, ``tf``'s
        content as fingerprinted now; the guard lets go of the file."""
        with self._lock:
            target = self._targets.get(tf.key)
            if target is None:
                return b""
            self._drop(tf.key)
        if (target.fp, target.fp_len) != (tf.fp, tf.fp_len) or not target.base <= offset:
            return b""
        data = target.data[offset - target.base:]
        return bytes(data[: data.rfind(b"\n") + 1])

    def close(self) -> None:
        """Stop the thread, release every descriptor."""
        with self._lock:
            self._closed = True
            for key in list(self._targets):
                self._drop(key)
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- the guard's thread ---------------------------------------------------------------

    def _start(self) -> None:
        self._inotify = inotify_simple.INotify(nonblocking=True)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._run, name="tail-copy-guard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:
            log.exception("copytruncate guard stopped: lines written during a copy may be lost")
            raise

    def _serve(self) -> None:
        assert self._inotify is not None
        poller = select.poll()
        poller.register(self._inotify.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._closed:
            poller.poll(self._timeout_ms())  # the one place this thread waits: without the GIL
            with self._lock:
                if self._closed:
                    return
                # Read first, everything else after: each system call gives the GIL up, and while
                # the loop thread runs Python code, getting it back takes a switch interval or
                # more (0.6-0.8 ms measured); reading after the event bookkeeping took 1-3 ms.
                for target in self._targets.values():
                    if not target.done:
                        self._catch(target)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)
            events = self._inotify.read(timeout=0)
            with self._lock:
                if self._closed:
                    return  # close() has let every file go: guarding one now would leave its descriptor open
                self._bookkeeping(events)

    def _bookkeeping(self, events: list[inotify_simple.Event]) -> None:
        """(Under the lock.) Guard the files opened, let go of those whose time is up, unmute directories."""
        for event in events:
            directory = self._watched.get(int(event.wd))
            if directory is not None and event.name:
                self._guard(os.path.join(directory, event.name))
        now = self._monotonic()
        for key, target in list(self._targets.items()):
            if now >= target.until:
                self._drop(key)
        for directory, until in list(self._muted.items()):
            if now >= until:
                del self._muted[directory]
                if directory in self._wanted:
                    self._watch_directory(directory)

    def _timeout_ms(self) -> int | None:
        with self._lock:
            if not self._targets and not self._muted:
                return None
            until = min([t.until for t in self._targets.values()] + list(self._muted.values()))
        return max(0, int((until - self._monotonic()) * 1000) + 1)

    def _guard(self, path: str) -> None:
        """Someone opened ``path``: guard it if it is a followed file (or guard it longer)."""
        tf = self._followed.get(path)
        if tf is None:
            return
        until = self._monotonic() + GUARD_FOR
        target = self._targets.get(tf.key)
        if target is not None:
            target.opens += 1
            if target.opens > REOPENS and not target.done:
                # A writer that opens the file for every write (create-mode logging, `>>` from a
                # shell): waking for each of its opens and writes here took the daemon from 16-18 %
                # to 25-29 % of a core at 1,000 lines/s, and such a writer is rotated by rename, not
                # copied. Its directory's opens go unwatched for a while (its other files too).
                self._drop(tf.key)
                directory = os.path.dirname(path)
                self._unwatch_directory(directory)
                self._muted[directory] = until
            elif not target.done:
                target.until = until
            return
        base, fp, fp_len = tf.offset, tf.fp, tf.fp_len
        if fp_len == 0 or len(self._targets) >= MAX_TARGETS:
            return  # empty: nothing to lose; or as many guarded as the descriptors allow
        try:
            # Read first (see _serve); checked below: the source may have closed its descriptor
            # since the path list was made, and the number be another file's now.
            first = os.pread(tf.fd, PIECE, base)
            fd = os.dup(tf.fd)  # our own descriptor, for as long as we need it
        except OSError:
            return
        try:
            st = os.fstat(fd)
            if f"{st.st_dev}:{st.st_ino}" != tf.key or fingerprint(fd, fp_len) != (fp, fp_len):
                os.close(fd)  # another file, or this one truncated or rewritten already
                return
            assert self._inotify is not None
            # The watch through our descriptor is on the inode we read, whatever its name is now.
            wd = int(self._inotify.add_watch(f"/proc/self/fd/{fd}", WRITES))
        except OSError:
            os.close(fd)
            return
        target = _Target(tf, fd, wd, fp, fp_len, base, until, bytearray(first))
        self._targets[tf.key] = target
        self._by_wd[wd] = target
        self._catch(target)

    def _catch(self, target: _Target) -> None:
        """Read what was written since the last read (drop what the source has read since)."""
        read_to = target.tf.offset  # an int read under the GIL: at worst a little stale
        if read_to > target.base:
            del target.data[: read_to - target.base]  # all of it if the source has read further
            target.base = read_to
        try:
            piece = os.pread(target.fd, PIECE, target.end)  # first: no fstat before it (see _serve)
            while len(piece) % PIECE == 0 and piece and len(target.data) + len(piece) <= self._cap:
                more = os.pread(target.fd, PIECE, target.end + len(piece))
                if not more:
                    break
                piece += more
            if not piece:
                if os.fstat(target.fd).st_size < target.end:
                    self._finish(target)  # truncated: what is held is all there was
                return
            if fingerprint(target.fd, target.fp_len) != (target.fp, target.fp_len):
                self._finish(target)  # truncated and rewritten since: the piece may be new content
                return
        except OSError:
            self._finish(target)
            return
        if len(target.data) + len(piece) > self._cap:
            target.data.clear()  # the source is far behind: the copy itself holds what it lacks
            self._finish(target)
            return
        target.data += piece

    def _finish(self, target: _Target) -> None:
        """Nothing more to read: keep what is held for the source to take, then let go."""
        target.done = True
        target.until = self._monotonic() + KEEP_FOR
        self._unwatch(target)

    def _watch_directory(self, directory: str) -> None:
        assert self._inotify is not None
        try:
            wd = int(self._inotify.add_watch(directory, OPENS))
        except OSError:
            return  # gone, or over the watch limit: the watcher reports those
        self._directories[directory] = wd
        self._watched[wd] = directory

    def _unwatch_directory(self, directory: str) -> None:
        wd = self._directories.pop(directory, None)
        if wd is None:
            return
        self._watched.pop(wd, None)
        if self._inotify is not None:
            with contextlib.suppress(OSError):  # already dropped with the directory
                self._inotify.rm_watch(wd)

    def _unwatch(self, target: _Target) -> None:
        if self._by_wd.pop(target.wd, None) is not None and self._inotify is not None:
            with contextlib.suppress(OSError):  # the file is gone: the kernel dropped the watch
                self._inotify.rm_watch(target.wd)

    def _drop(self, key: str) -> None:
        target = self._targets.pop(key)
        self._unwatch(target)
        os.close(target.fd)
