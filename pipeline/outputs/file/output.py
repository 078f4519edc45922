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

from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk
from pipeline.durability import copy_range, make_dirs, open_file, pwrite_all, sync, sync_data, sync_dir
from pipeline.errors import RetryableError, UnrecoverableError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.file.config import FileOutputConfig

log = logging.getLogger("logferry.output.file")
_PAGE = 4096


class FileOutput:
    """Writes chunks as JSON Lines (optionally gzip) to ``config.path`` (strftime of the time key)."""

    def __init__(self, config: FileOutputConfig, context: OutputContext) -> None:
        self.config = config
        self.context = context
        self.journal_path = context.state_dir / "file-output.journal"
        self._one_at_a_time = asyncio.Lock()  # the journal's guarantee needs sequential appends
        self._journal_fd: int | None = None

    async def start(self) -> None:
        """Cut back any chunk whose append was interrupted by a crash (see module doc)."""
        await asyncio.to_thread(self._recover)

    async def close(self) -> None:
        """Release the journal."""
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

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
        make_dirs(path.parent)
        fd = open_file(path, os.O_WRONLY)  # appends at explicit offsets (copy_range)
        try:
            start = self._claim(chunk, path, fd)
            try:
                self._append(chunk, fd, start)
                sync(fd)
            except BaseException:
                os.ftruncate(fd, start)  # leave no half chunk behind for readers
                raise
        finally:
            os.close(fd)

    def _append(self, chunk: Chunk, fd: int, end: int) -> None:
        """Append the chunk's records at ``end``, frame by frame: never the whole chunk in memory."""
        if self.config.compress == "none" and not chunk.leaves_out_records():
            with chunk.path.open("rb") as src:
                for offset, length in frame.payload_spans(src):
                    copy_range(src.fileno(), fd, offset, length, end)
                    end += length
            return
        for data in self._encoded(chunk) if self.config.compress != "none" else chunk.payloads():
            end = pwrite_all(fd, data, end)

    def _claim(self, chunk: Chunk, path: Path, fd: int) -> int:
        """Journal where this chunk starts, before appending it."""
        st = os.fstat(fd)
        journal = self._load_journal()
        journal[chunk.chunk_id] = {"path": str(path), "file": f"{st.st_dev}:{st.st_ino}", "offset": st.st_size}
        self._save_journal(journal)
        return st.st_size

    def _save_journal(self, journal: dict[str, Any]) -> None:
        """Overwrite the journal in place, padded to whole pages with JSON whitespace.

        One write and one fdatasync per chunk: the file keeps its size, so no metadata
        (and no rename or directory sync) is involved. A write torn by a power loss
        leaves invalid JSON, which reads as an empty journal: that chunk may then be
        appended twice, never lost.
        """
        data = orjson.dumps(journal)
        if self._journal_fd is None:
            self._journal_fd = open_file(self.journal_path, os.O_RDWR)
        size = os.fstat(self._journal_fd).st_size
        padded = data.ljust(max(size, -(-len(data) // _PAGE) * _PAGE))
        os.pwrite(self._journal_fd, padded, 0)
        if len(padded) == size:
            sync_data(self._journal_fd)
        else:  # created or grown: the size and the directory entry must be durable too
            sync(self._journal_fd)
            sync_dir(self.journal_path.parent)

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
        self._save_journal({})

    def _load_journal(self) -> dict[str, Any]:
        """Entries of chunks still in the buffer (acked chunks' entries are dropped)."""
        try:
            journal: dict[str, Any] = orjson.loads(self.journal_path.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError:
            return {}  # a torn write (power loss) or a foreign edit: start a new one
        names = os.listdir(self.context.state_dir)
        return {cid: e for cid, e in journal.items() if any(f".{cid}." in name for name in names)}

    def _encoded(self, chunk: Chunk) -> Iterator[bytes]:
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        for payload in chunk.payloads():
            yield packer.compress(payload)
        yield packer.flush()

