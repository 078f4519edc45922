"""The copy guard's helper process: reads a followed file at every write while someone else has it open.

Started and owned by :class:`~pipeline.sources.tail.guard.CopyGuard` (one per tail source that
follows files). It runs outside the daemon's GIL, so a write is read while the daemon's event loop
parses a batch: the thread this replaces waited 0.6-0.8 ms for the GIL then (3 lines at 5,000
lines/s), and logrotate's window between its copy and its truncate is 1-2 ms.

Protocol (a socket; each message a frame: a 4-byte big-endian length, then that many bytes; a
message's fields are separated by NUL bytes, names in the file system's encoding, numbers in
decimal: :func:`frame`, :func:`fields`):

  daemon → helper  ``follow N (path key fp fp_len slot)×N directory…``: the files followed now and
                   the directories to watch for opens (replaces the previous);
                   ``take key fp fp_len offset``: the source found the file truncated; answered
                   with the whole lines held from ``offset`` on (empty if none, or if they were
                   read from another content), and the file is let go;
                   ``guarded``: answered with the files guarded now, a line each: the key and the
                   offset read to (for tests and diagnostics);
                   EOF: exit (the daemon closed the socket, or was killed).
  helper → daemon  an answer: a frame of bytes.
  daemon → helper  (shared memory) slot ``n`` holds the source's read offset of the file given
                   slot ``n``, an 8-byte integer the source stores after each read: the helper
                   drops what the source has read (a stale, lower value only keeps more).

Nothing here is kept across a restart: what the helper holds is only ever handed to the source
that asked for it, and the source commits it as it commits its own reads.
"""

from __future__ import annotations

# The imports are few on purpose: the helper's memory is an interpreter's and little more (no
# multiprocessing, hashlib's OpenSSL, dataclasses, logging: 22 MB RSS with them).
import mmap
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Sequence

import inotify_simple

from pipeline.sources.tail.heads import FP_BYTES, head_digest

_F = inotify_simple.flags
OPENS = int(_F.OPEN | _F.ONLYDIR)
WRITES = int(_F.MODIFY)
GUARD_FOR = 1.0  # seconds of reading at every write after a foreign open (the copy, its fsync, the truncate)
KEEP_FOR = 5.0  # seconds the bytes read before a truncate wait for the source to take them
REOPENS = 20  # opens within GUARD_FOR that mark a writer opening the file for each write (not a copier)
PIECE = 64 * 1024  # bytes per read: a few writes' worth at most, so no large buffer per read
# Files guarded at once. Each holds a descriptor, and a writer that opens many followed files (one
# open per file and round) would otherwise have them all guarded for a second. logrotate copies one
# file at a time.
MAX_TARGETS = 2
SLOT = struct.Struct("<q")  # a read offset in the shared memory
FRAME = struct.Struct(">I")  # a message's length


def frame(*values: str | int) -> bytes:
    """A message of ``values`` (no NUL byte in any), framed."""
    payload = b"\0".join(os.fsencode(value) if isinstance(value, str) else b"%d" % value for value in values)
    return FRAME.pack(len(payload)) + payload


def fields(payload: bytes) -> list[str]:
    """A message's fields (numbers as their decimal text)."""
    return [os.fsdecode(value) for value in payload.split(b"\0")]


def read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from the blocking descriptor ``fd``; EOFError at its end."""
    data = b""
    while len(data) < size:
        piece = os.read(fd, size - len(data))
        if not piece:
            raise EOFError
        data += piece
    return data


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to the blocking descriptor ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Followed:
    """A followed file as the source last described it."""

    __slots__ = ("key", "fp", "fp_len", "slot")

    def __init__(self, key: str, fp: str, fp_len: int, slot: int) -> None:
        self.key, self.fp, self.fp_len, self.slot = key, fp, fp_len, slot

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Followed) and (self.key, self.fp, self.fp_len, self.slot) == (
            other.key, other.fp, other.fp_len, other.slot
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, as a dataclass


class Target:
    """One guarded file: its bytes from ``base`` on, read through a descriptor of our own."""

    __slots__ = ("path", "followed", "fd", "wd", "base", "until", "data", "head", "done", "opens")

    def __init__(
        self, path: str, followed: Followed, fd: int, wd: int, base: int, until: float, data: bytearray, head: bytes
    ) -> None:
        self.path, self.followed, self.fd, self.wd, self.base, self.until = path, followed, fd, wd, base, until
        self.data = data
        # The file's first bytes as read here (up to FP_BYTES, longer as it grows): the content the
        # source fingerprints, checked at each read and at the take whatever length the source has
        # fingerprinted since (a file emptied by the last truncate is fingerprinted anew as it grows).
        self.head = head
        self.done = False  # truncated, replaced or over the cap: nothing more is read
        self.opens = 1

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def starts_as(self, fp: str, fp_len: int) -> bool:
        """Whether the source's fingerprint ``fp`` of ``fp_len`` bytes is of this content."""
        return starts_as(self.head, fp, fp_len)


def starts_as(head: bytes, fp: str, fp_len: int) -> bool:
    """Whether a file beginning with ``head`` is the one fingerprinted ``fp`` over ``fp_len`` bytes."""
    return fp_len <= len(head) and head_digest(head[:fp_len]) == fp


class Helper:
    """The helper's state and its one loop (:meth:`serve`)."""

    def __init__(self, conn: int, offsets: mmap.mmap, cap: int) -> None:
        self.conn = conn  # the socket's descriptor (blocking)
        self.conn_ready = select.poll()
        self.conn_ready.register(conn, select.POLLIN)
        self.offsets = offsets
        self.cap = cap  # bytes held beyond what the source has read, per file
        self.inotify = inotify_simple.INotify(nonblocking=True)
        self.followed: dict[str, Followed] = {}  # path → file
        self.directories: dict[str, int] = {}  # directory → watch descriptor
        self.wanted: set[str] = set()
        self.watched: dict[int, str] = {}
        self.targets: dict[str, Target] = {}  # by file key
        self.by_wd: dict[int, Target] = {}
        self.muted: dict[str, float] = {}  # directory → until when its opens are not watched
        self.opens_seen = 0  # opens of followed files, ours included (for tests and diagnostics)

    def serve(self) -> None:
        """Until the daemon says stop or goes away; then release every descriptor."""
        try:
            self._serve()
        finally:
            for key in list(self.targets):
                self.drop(key)
            self.inotify.close()
            os.close(self.conn)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.inotify.fileno(), select.POLLIN)
        poller.register(self.conn, select.POLLIN)
        while True:
            poller.poll(self.timeout_ms())
            # The events are taken before the reads, so every write they report is read now: taken
            # after, a write landing between the reads and the taking would wait for the next event,
            # and its lines were lost when that was the truncate (a unit test saw it every other run).
            events = self.inotify.read(timeout=0)
            for target in self.targets.values():
                if not target.done:
                    self.catch(target)
            while self.conn_ready.poll(0):
                try:
                    self.handle(fields(read_exactly(self.conn, FRAME.unpack(read_exactly(self.conn, FRAME.size))[0])))
                except (EOFError, ConnectionError):
                    return  # the daemon closed the socket or was killed (before or while it was answered)
            self.bookkeeping(events)

    def handle(self, message: Sequence[str]) -> None:
        """Act on one message of the daemon's (see the module doc)."""
        verb = message[0]
        if verb == "follow":
            count = int(message[1])
            specs = message[2 : 2 + 5 * count]
            files = {
                specs[i]: Followed(specs[i + 1], specs[i + 2], int(specs[i + 3]), int(specs[i + 4]))
                for i in range(0, 5 * count, 5)
            }
            self.follow(files, set(message[2 + 5 * count :]))
        elif verb == "take":
            _, key, fp, fp_len, offset = message
            self.answer(self.take(key, fp, int(fp_len), int(offset)))
        elif verb == "guarded":
            self.answer("".join(f"{key} {t.end}\n" for key, t in self.targets.items()).encode())
        else:
            raise ValueError(f"unknown message {verb!r}")

    def answer(self, data: bytes) -> None:
        write_all(self.conn, FRAME.pack(len(data)) + data)

    def follow(self, files: dict[str, Followed], directories: set[str]) -> None:
        self.followed = files
        for directory in directories - self.directories.keys() - self.muted.keys():
            self.watch_directory(directory)
        for directory in self.directories.keys() - directories:
            self.unwatch_directory(directory)
        self.wanted = directories
        for key, target in list(self.targets.items()):
            now = files.get(target.path)
            if now is not None and not target.done and now.fp_len > len(target.head):
                # The source read (and fingerprinted) the file's growth before this loop did.
                try:
                    self.grow_head(target)
                except OSError:
                    pass  # the comparison with the source's fingerprint below lets the file go
            if now is not None and (now.key, now.slot) == (key, target.followed.slot) and target.starts_as(
                now.fp, now.fp_len
            ):
                target.followed = now  # the same content, fingerprinted further as it grew
            else:
                self.drop(key)

    def take(self, key: str, fp: str, fp_len: int, offset: int) -> bytes:
        target = self.targets.get(key)
        if target is None:
            return b""
        if not target.done:
            self.catch(target)  # the last writes before the truncate, if not read yet
        self.drop(key)
        if not target.starts_as(fp, fp_len) or not target.base <= offset:
            return b""
        data = target.data[offset - target.base:]
        return bytes(data[: data.rfind(b"\n") + 1])

    def grow_head(self, target: Target) -> bool:
        """Read ``target``'s first bytes again and take them if they begin as the ones held (the same
        content, grown); False if they do not (truncated and rewritten)."""
        head = os.pread(target.fd, FP_BYTES, 0)
        if not head.startswith(target.head):
            return False
        target.head = head
        return True

    def bookkeeping(self, events: list[inotify_simple.Event]) -> None:
        """Guard the files opened, let go of those whose time is up, unmute directories."""
        for event in events:
            directory = self.watched.get(int(event.wd))
            if directory is not None and event.name:
                self.guard(os.path.join(directory, event.name))
        now = time.monotonic()
        for key, target in list(self.targets.items()):
            if now >= target.until:
                self.drop(key)
        for directory, until in list(self.muted.items()):
            if now >= until:
                del self.muted[directory]
                if directory in self.wanted:
                    self.watch_directory(directory)

    def timeout_ms(self) -> int | None:
        if not self.targets and not self.muted:
            return None
        until = min([t.until for t in self.targets.values()] + list(self.muted.values()))
        return max(0, int((until - time.monotonic()) * 1000) + 1)

    def read_offset(self, followed: Followed) -> int:
        return int(SLOT.unpack_from(self.offsets, followed.slot * SLOT.size)[0])

    def guard(self, path: str) -> None:
        """Someone opened ``path``: guard it if it is a followed file (or guard it longer)."""
        followed = self.followed.get(path)
        if followed is None:
            return
        self.opens_seen += 1
        until = time.monotonic() + GUARD_FOR
        target = self.targets.get(followed.key)
        if target is not None:
            target.opens += 1
            if target.opens > REOPENS and not target.done:
                # A writer that opens the file for every write (create-mode logging, `>>` from a
                # shell): such a writer is rotated by rename, not copied, and waking for each of
                # its opens and writes costs CPU. Its directory's opens go unwatched for a while.
                self.drop(followed.key)
                directory = os.path.dirname(path)
                self.unwatch_directory(directory)
                self.muted[directory] = until
            elif not target.done:
                target.until = until
            return
        if len(self.targets) >= MAX_TARGETS:
            return  # as many guarded as the descriptors allow
        base = self.read_offset(followed)
        try:
            # An open of our own: the directory watch reports it too (one more of this file's opens,
            # and the source's pacer reads at every write a little longer: it reacts to opens as well).
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            first = os.pread(fd, PIECE, base)  # read first: the writes are what is at stake
            st = os.fstat(fd)
            head = os.pread(fd, FP_BYTES, 0)
            # Also a file empty at the source's last look (fingerprinted over 0 bytes): one emptied by
            # the last copytruncate, written again since. Which content it is, the take checks.
            if f"{st.st_dev}:{st.st_ino}" != followed.key or followed.fp_len and not starts_as(
                head, followed.fp, followed.fp_len
            ):
                os.close(fd)  # another file at this path now, or this one truncated or rewritten already
                return
            # The watch through our descriptor is on the inode we read, whatever its name is now.
            wd = int(self.inotify.add_watch(f"/proc/self/fd/{fd}", WRITES))
        except OSError:
            os.close(fd)
            return
        target = Target(path, followed, fd, wd, base, until, bytearray(first), head)
        self.targets[followed.key] = target
        self.by_wd[wd] = target
        self.catch(target)

    def catch(self, target: Target) -> None:
        """Read what was written since the last read (drop what the source has read since)."""
        read_to = self.read_offset(target.followed)
        if read_to > target.base:
            del target.data[: read_to - target.base]  # all of it if the source has read further
            target.base = read_to
        try:
            piece = os.pread(target.fd, PIECE, target.end)
            while len(piece) % PIECE == 0 and piece and len(target.data) + len(piece) <= self.cap:
                more = os.pread(target.fd, PIECE, target.end + len(piece))
                if not more:
                    break
                piece += more
            if not piece:
                if os.fstat(target.fd).st_size < target.end:
                    self.finish(target)  # truncated: what is held is all there was
                return
            if not self.grow_head(target):
                self.finish(target)  # truncated and rewritten since: the piece may be new content
                return
        except OSError:
            self.finish(target)
            return
        if len(target.data) + len(piece) > self.cap:
            target.data.clear()  # the source is far behind: the copy itself holds what it lacks
            self.finish(target)
            return
        target.data += piece

    def finish(self, target: Target) -> None:
        """Nothing more to read: keep what is held for the source to take, then let go."""
        target.done = True
        target.until = time.monotonic() + KEEP_FOR
        self.unwatch(target)

    def watch_directory(self, directory: str) -> None:
        try:
            wd = int(self.inotify.add_watch(directory, OPENS))
        except OSError:
            return  # gone, or over the watch limit: the source's watcher reports those
        self.directories[directory] = wd
        self.watched[wd] = directory

    def unwatch_directory(self, directory: str) -> None:
        wd = self.directories.pop(directory, None)
        if wd is None:
            return
        self.watched.pop(wd, None)
        try:
            self.inotify.rm_watch(wd)
        except OSError:
            pass  # already dropped with the directory

    def unwatch(self, target: Target) -> None:
        if self.by_wd.pop(target.wd, None) is not None:
            try:
                self.inotify.rm_watch(target.wd)
            except OSError:
                pass  # the file is gone: the kernel dropped the watch

    def drop(self, key: str) -> None:
        target = self.targets.pop(key)
        self.unwatch(target)
        os.close(target.fd)


def main(argv: list[str]) -> None:
    """Entry point: ``CONN_FD MEMORY_FD MEMORY_BYTES CAP``."""
    # The daemon gone, a write to the socket fails with EPIPE (ignored by Python's start already; said
    # here as the helper depends on it to leave quietly).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # A stop signal sent to the whole process group (systemd, a terminal's Ctrl-C) is the daemon's to
    # handle: the helper leaves when the daemon closes its socket, or at EOF when it is killed.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    conn_fd, memory_fd, size, cap = (int(a) for a in argv)
    with mmap.mmap(memory_fd, size, prot=mmap.PROT_READ) as offsets:
        os.close(memory_fd)
        Helper(conn_fd, offsets, cap).serve()


if __name__ == "__main__":
    from pipeline.sources.tail import guard_helper

    guard_helper.main(sys.argv[1:])
