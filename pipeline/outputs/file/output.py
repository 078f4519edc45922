"""FileOutput: append each chunk's records to a file named from its time key.

Delivery guarantee: exactly once, across crashes. Chunks are appended one at a time.
Before appending a chunk, the output records in a journal (in its buffer directory)
where the chunk starts in which file. If the daemon dies after appending but before
the chunk is acked, the chunk is still in the buffer at the next start: ``start()``
then cuts the file back to where that chunk began (nothing else can have been
appended after it), and the chunk is delivered again in its turn. Someone else
appending to the same file at the same time is not covered.

With ``compress = "gzip"`` each chunk is one gzip member; concatenated members are one
valid gzip file (``zcat`` reads them all).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.buffer.chunk import Chunk
from pipeline.durability import sync, write_atomic
from pipeline.errors import RetryableError, UnrecoverableError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.file.config import FileOutputConfig

log = logging.getLogger("logferry.output.file")


class FileOutput:
    """Writes chunks as JSON Lines (optionally gzip) to ``config.path`` (strftime of the time key)."""

    def __init__(self, config: FileOutputConfig, context: OutputContext) -> None:
        self.config = config
        self.context = context
        self.journal_path = context.state_dir / "file-output.journal"
        self._one_at_a_time = asyncio.Lock()  # the journal's guarantee needs sequential appends

    async def start(self) -> None:
        """Cut back any chunk whose append was interrupted by a crash (see module doc)."""
        await asyncio.to_thread(self._recover)

    async def close(self) -> None:
        """Nothing to release."""

    def target(self, chunk: Chunk) -> Path:
        """The file a chunk goes to."""
        return Path(time.strftime(self.config.path, time.gmtime(chunk.timekey)))

    async def write(self, chunk: Chunk) -> None:
        """Append the chunk (in a worker thread)."""
        try:
            async with self._one_at_a_time:
                await asyncio.to_thread(self._write, chunk)
        except PermissionError as exc:
            raise UnrecoverableError(f"cannot write {exc.filename}: permission denied") from exc
        except OSError as exc:
            raise RetryableError(f"cannot write {exc.filename}: {exc.strerror}") from exc

    def _write(self, chunk: Chunk) -> None:
        path = self.target(chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            start = self._claim(chunk, path, fd)
            try:
                _write_all(fd, list(self._encoded(chunk)))
                sync(fd)
            except BaseException:
                os.ftruncate(fd, start)  # leave no half chunk behind for readers
                raise
        finally:
            os.close(fd)

    def _claim(self, chunk: Chunk, path: Path, fd: int) -> int:
        """Journal where this chunk starts, before appending it."""
        st = os.fstat(fd)
        journal = self._load_journal()
        journal[chunk.chunk_id] = {"path": str(path), "file": f"{st.st_dev}:{st.st_ino}", "offset": st.st_size}
        write_atomic(self.journal_path, orjson.dumps(journal))
        return st.st_size

    def _recover(self) -> None:
        """Cut files back to where an interrupted (still unacked) chunk began."""
        journal = self._load_journal()
        for chunk_id, entry in journal.items():
            try:
                fd = os.open(entry["path"], os.O_WRONLY)
            except FileNotFoundError:
                continue
            try:
                st = os.fstat(fd)
                if f"{st.st_dev}:{st.st_ino}" == entry["file"] and st.st_size > entry["offset"]:
                    log.warning("cutting back interrupted delivery output=%s chunk=%s path=%s bytes=%d",
                                self.context.name, chunk_id, entry["path"], st.st_size - entry["offset"])
                    os.ftruncate(fd, entry["offset"])
                    sync(fd)
            finally:
                os.close(fd)
        write_atomic(self.journal_path, b"{}")

    def _load_journal(self) -> dict[str, Any]:
        """Entries of chunks still in the buffer (acked chunks' entries are dropped)."""
        try:
            journal: dict[str, Any] = orjson.loads(self.journal_path.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError:
            return {}  # written atomically, so only a foreign edit gets here; start a new one
        directory = self.context.state_dir
        return {cid: e for cid, e in journal.items() if any(directory.glob(f"*.{cid}.*"))}

    def _encoded(self, chunk: Chunk) -> Iterator[bytes]:
        if self.config.compress == "none":
            yield from chunk.payloads()
            return
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        for payload in chunk.payloads():
            yield packer.compress(payload)
        yield packer.flush()


_IOV_MAX = 1024  # Linux's limit on buffers per writev()


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write every part, in order, with as few system calls as the kernel allows."""
    pending = [memoryview(p) for p in parts if p]
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first : first + _IOV_MAX])
        while written and written >= len(pending[first]):
            written -= len(pending[first])
            first += 1
        if written:
            pending[first] = pending[first][written:]
