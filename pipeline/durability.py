"""How written bytes reach the file and become durable: the one place that calls fsync.

``fsync = true`` (the default) forces every commit, delivery and state file to disk
before the step after it is taken: nothing is lost or duplicated even when the machine
loses power or the kernel crashes. ``fsync = false`` leaves the data in the page cache
for the kernel to write back: every guarantee against a process crash (``kill -9``,
OOM kill, restart) still holds, because the kernel keeps what was written, but a power
loss or kernel crash can lose or repeat the last few seconds (what Fluentd's and Fluent
Bit's file buffers do by default). Set once at start (``configure``), like logging.

It is also where files and directories come into being: everything the daemon creates
(buffers, dead letters, positions, outputs, sockets, status files) is owner and group
only, FILE_MODE and DIR_MODE, whatever the umask it was started with. The mode is set
explicitly after creation because the umask masks the mode given to open() and mkdir():
a umask of 077 would make a file 0600 (the service's group could not read it), and a
umask of 000 would make a directory 0777. Creation asks for the final mode already, so
until the chmod the umask can only narrow it: no one else ever gets a moment to open a
file or plant one in a new directory. Only what the daemon creates gets these
modes: a directory or file that already exists (an operator's output directory) keeps
the mode its owner gave it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path

_IOV_MAX = 1024  # Linux's limit on buffers per writev()
FILE_MODE = 0o640  # owner reads and writes, the service's group reads, others nothing
DIR_MODE = 0o750

_fsync_enabled = True


def configure(fsync: bool) -> None:
    """Choose whether ``sync`` and ``sync_dir`` reach the disk (from ``Settings.fsync``)."""
    global _fsync_enabled
    _fsync_enabled = fsync


def sync(fd: int) -> None:
    """Make every byte written to ``fd`` durable (with ``fsync = true``)."""
    if _fsync_enabled:
        os.fsync(fd)


def sync_data(fd: int) -> None:
    """Like ``sync``, for a file whose size did not change: its data only, not its metadata."""
    if _fsync_enabled:
        os.fdatasync(fd)


def sync_dir(directory: Path) -> None:
    """Make a directory's entries (new, renamed or removed files) durable."""
    if not _fsync_enabled:
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, pieces: Sequence[bytes]) -> None:
    """Write every piece, in order, with as few system calls as the kernel allows (no joining copy)."""
    pending = [memoryview(p) for p in pieces if p]
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first : first + _IOV_MAX])
        while written and written >= len(pending[first]):
            written -= len(pending[first])
            first += 1
        if written:
            pending[first] = pending[first][written:]


def append_whole(fd: int, pieces: Sequence[bytes], cut_back_failed: Callable[[OSError], None]) -> None:
    """Append ``pieces`` to ``fd`` (opened for appending) and sync, all or nothing: on a failure the file is cut
    back to its size before, so a retry appends them again whole, and the error is raised. Should the cut-back
    fail too, ``cut_back_failed`` gets its error (the caller says what the leftover bytes mean)."""
    size = os.fstat(fd).st_size
    try:
        write_all(fd, pieces)
        sync(fd)
    except OSError:
        try:
            os.ftruncate(fd, size)
            sync(fd)
        except OSError as exc:
            cut_back_failed(exc)
        raise


_COPY_STEP = 1 << 30
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def copy_range(src: int, dst: int, offset: int, count: int, dst_offset: int) -> None:
    """Copy ``count`` bytes of ``src`` from ``offset`` to ``dst`` at ``dst_offset``.

    ``copy_file_range`` moves the bytes inside the kernel: no copy through Python's
    memory and no GIL held while they move. Where the file systems cannot (another
    file system on old kernels, some network ones), the bytes go through a buffer.
    """
    while count:
        try:
            copied = os.copy_file_range(src, dst, min(count, _COPY_STEP), offset, dst_offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            copied = _copy_through_buffer(src, dst, offset, min(count, 1 << 20), dst_offset)
        if copied == 0:
            raise OSError(errno.EIO, f"source ended {count} bytes early")
        offset, dst_offset, count = offset + copied, dst_offset + copied, count - copied


def _copy_through_buffer(src: int, dst: int, offset: int, count: int, dst_offset: int) -> int:
    data = os.pread(src, count, offset)
    pwrite_all(dst, data, dst_offset)
    return len(data)


def pwrite_all(fd: int, data: bytes, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (short writes continued); returns the offset after it."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return offset


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the temporary file is ours, new or left over: it becomes ``path``
        write_all(fd, [data])
        sync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each DIR_MODE; existing ones are left as they are."""
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            directory.mkdir(DIR_MODE)  # never wider than DIR_MODE, not even until the chmod below
        except FileExistsError:
            continue  # made meanwhile (another thread, another process): not ours to chmod
        os.chmod(directory, DIR_MODE)


def open_file(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)``; a file this call creates gets FILE_MODE.

    Opening with O_EXCL first tells a new file from an existing one without a race; a file
    removed between the two opens (an operator's rotation of an output file) is created.
    """
    while True:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            try:
                return os.open(path, flags | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
        os.fchmod(fd, FILE_MODE)
        return fd


def opener(path: str, flags: int) -> int:
    """For ``open(path, mode, opener=opener)``: a file that open() creates gets FILE_MODE."""
    return open_file(Path(path), flags)


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new or replaced ``dst`` with FILE_MODE (shutil.copyfile would use the umask)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with src.open("rb") as source:
            copy_range(source.fileno(), fd, 0, os.fstat(source.fileno()).st_size, 0)
    finally:
        os.close(fd)
