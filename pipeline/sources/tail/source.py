"""TailSource: discover files by glob, follow them through rotation, emit blocks of whole lines.

Discovery is a glob rescan (every ``rescan_interval``, and whenever inotify reports a
change it cannot map to a known file); reading is driven by inotify events on the
directories (:mod:`~pipeline.sources.tail.watcher`: a write is read within a millisecond
or so), with the rescan as the fallback where notification is unavailable.

Rotation, as each case looks from here:

* rename + create: the old inode leaves every matched path; it is read to its end,
  kept ``rotate_wait`` seconds for late writes, then closed and its position dropped.
  The new file is a new inode, read from 0.
* copytruncate: same inode, size below our offset (or first bytes changed): start at 0.
  What the copy guard (:mod:`~pipeline.sources.tail.guard`) read of the old content past our
  offset, while the copier had the file open, is emitted first; the copy is read from past it.
* deleted while open: like rename; the open descriptor still reads the data.
* inode reuse: a known inode whose first bytes no longer match the fingerprint is a
  new file, read from 0.
* restart after a rotation: a saved position whose inode is no longer matched is
  looked up among the files in the watched directories (``agent.log.1``) and finished.
* restart after rotations while stopped: rotated generations written since the last
  position save are found at the first look (same directory or ``olddir``, names in
  :mod:`~pipeline.sources.tail.discovery`): a new generation is read from its head, a
  copytruncate copy from the saved offset of the file it copies; all of them are read
  to their end, oldest first, before the live files.

All blocking file work runs in worker threads, one step at a time, from this source's
own loop, so a file is never touched by two threads at once. The one exception is the
read of bytes already in the page cache, which never blocks and is done on the event
loop (see :class:`~pipeline.sources.tail.reader.CachedReader`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.sources.base import Emit, LineBatch, SourceContext
from pipeline.sources.tail.checkpoint import FilePosition
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.discovery import (
    FoundFile,
    directories_to_watch,
    is_compressed,
    is_sibling,
    list_directories,
    matched_files,
    sibling_patterns,
    with_olddirs,
)
from pipeline.sources.tail.generations import (
    MTIME_SLACK,
    copy_offset,
    head_fingerprints,
    read_before_compressed,
    replaced,
    same_start,
)
from pipeline.sources.tail.guard import CopyGuard
from pipeline.sources.tail.heads import FP_BYTES, fingerprint
from pipeline.sources.tail.pacing import HeldLines, ReadPacer
from pipeline.sources.tail.reader import CachedReader, NotCached, ReadResult, TailedFile, file_key, read_step
from pipeline.sources.tail.watcher import Changes, DirectoryWatcher

log = logging.getLogger("logferry.tail")
BATCHES_PER_TURN = 8  # per file, before the next file gets its turn


class TailSource:
    """Follow files matching ``config.paths``; emit ``LineBatch`` blocks of complete lines."""

    def __init__(
        self,
        name: str,
        config: TailSourceConfig,
        context: SourceContext,
    ) -> None:
        self.name = name
        self.config = config
        self.positions = context.positions
        self.dead_letters = context.dead_letters
        self.clock = context.clock
        self.files: dict[str, TailedFile] = {}
        self.lines_read = 0
        self._dirty: set[str] = set()
        self._rescan_requested = False
        self._pending_forget: list[str] = []
        self._unreadable: set[str] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._watcher = DirectoryWatcher(self._note_changes)
        self._held: dict[str, HeldLines] = {}  # file key → lines read, not emitted yet (pacing.py)
        self._pacer = ReadPacer(self._wake.set, self._watcher.pause_writes, self._watcher.resume_writes,
                                self._watcher.poll_writes, self.clock.monotonic)
        self.on_read: Callable[[str, int], None] | None = None  # (file key, offset read to): for benchmarks
        self._last_discovery: tuple[float, float] | None = None  # (wall, monotonic) of the previous look
        self._forgotten: set[str] = set()
        self._retired: dict[str, FilePosition] = {}  # finished here; their last commit may be pending
        self._copied: dict[tuple[str, int], int] = {}
        self._parked: dict[str, FilePosition] = {}  # closed to stay under max_open_files; read position kept
        self._waiting: set[str] = set()
        self._cached = CachedReader(min(config.read_bytes, config.max_line_bytes))
        self._guard = CopyGuard(config.read_bytes)
        # file key → (offset, lines, fingerprint, its length): the guard's bytes of a truncated content
        self._salvaged: dict[str, tuple[int, bytes, str, int]] = {}

    @property
    def unreadable(self) -> set[str]:
        """Matched files the daemon's user cannot read (reported once each)."""
        return set(self._unreadable)

    def stop(self) -> None:
        """Finish the current step and return from ``run``."""
        self._stop.set()
        self._wake.set()

    async def run(self, emit: Emit) -> None:
        """Follow the files until stopped."""
        try:
            self._watcher.start()
            await self._look()
            await self._catch_up_rotated(emit)
            await self._loop(emit)
            for tf in list(self.files.values()):
                await self._release(tf, emit)  # read before the stop: emitted, as one more step would
        finally:
            self._pacer.cancel()
            self._guard.close()
            self._watcher.close()
            for tf in self.files.values():
                tf.close()

    # -- the loop ----------------------------------------------------------------------

    async def _loop(self, emit: Emit) -> None:
        next_rescan = self.clock.monotonic() + self.config.rescan_interval
        while not self._stop.is_set():
            self._wake.clear()
            for key in self._pending_forget:
                await emit(self._forget_batch(key))
            self._pending_forget.clear()
            await self._read_dirty(emit)
            self._pacer.read_done()
            await self._release_due(emit)
            await self._retire_rotated(emit)
            now = self.clock.monotonic()
            if self._rescan_requested or now >= next_rescan:
                self._rescan_requested = False
                next_rescan = now + self.config.rescan_interval
                await self._look()
                continue
            if self._dirty:
                continue  # files with more to read
            await self._sleep(min(next_rescan - now, self._next_retirement(now), self._next_release(now)))

    async def _sleep(self, seconds: float) -> None:
        # A timer that sets the wake event, not wait_for: this runs once per write on a hot
        # file, and wait_for costs a task each time.
        timer = asyncio.get_running_loop().call_later(max(seconds, 0.0), self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def _read_dirty(self, emit: Emit) -> int:
        """Read every file with news; whole lines are held (pacing.py), the rest emitted at once."""
        reads = 0
        for key in list(self._dirty):
            tf = self.files.get(key)
            self._dirty.discard(key)
            if tf is None:
                continue
            for _ in range(BATCHES_PER_TURN):
                if self._stop.is_set():
                    return reads
                result = await self._read_next(tf, emit)
                if result is None:
                    if tf.idle_since is None:
                        tf.idle_since = self.clock.monotonic()
                    break
                tf.idle_since = None
                reads += 1
                self._guard.note(tf)
                if self.on_read is not None:
                    self.on_read(tf.key, result.end)
                await self._hold_or_emit(tf, result, emit)
                if self._cached.reached_end(tf):
                    # No second read to learn that: on a hot file this runs once per write.
                    tf.idle_since = self.clock.monotonic()
                    break
            else:
                self._dirty.add(key)  # more to read: come back after the other files
        return reads

    async def _read_next(self, tf: TailedFile, emit: Emit) -> ReadResult | None:
        if tf.key in self._salvaged:
            await self._release(tf, emit)  # the old content's last lines, before any of the new one's
        try:
            return self._cached.read(tf)
        except NotCached:
            # The blocking step may find the file replaced and start it again: what is held
            # belongs to the old content, so it goes first.
            await self._release(tf, emit)
            result = await asyncio.to_thread(self._read_result, tf, False)
            if tf.key in self._salvaged:
                await self._release(tf, emit)
            return result

    async def _hold_or_emit(self, tf: TailedFile, result: ReadResult, emit: Emit) -> None:
        held = self._held.setdefault(tf.key, HeldLines())
        if result.dead or result.end == result.start or not held.follows(result):
            await self._release(tf, emit)
            if result.end > result.start or result.dead:  # else: progress inside an oversized line
                await emit(self._batch(tf, result))
            return
        # A batch stays within read_bytes (what the stages' memory bound counts on), and a
        # catching-up file's big reads go out as they come.
        if held and held.size + len(result.data) > self.config.read_bytes:
            await self._release(tf, emit)
        held.add(result, tf.fp, tf.fp_len)
        if held.size >= self.config.read_bytes // 2:
            await self._release(tf, emit)

    async def _release(self, tf: TailedFile, emit: Emit) -> None:
        """Emit what is held for ``tf``, if anything, then what the guard read before a truncate."""
        held = self._held.get(tf.key)
        if held:
            start, end, data, fp, fp_len = held.take()
            held.last_emit = self.clock.monotonic()
            position = FilePosition(self.name, tf.key, tf.path, end, fp, fp_len, *tf.copied)
            await emit(LineBatch(self.name, self.config.tag, tf.key, tf.path, start, end, data, position))
        salvaged = self._salvaged.pop(tf.key, None)
        if salvaged is not None:
            start, data, fp, fp_len = salvaged
            end = start + len(data)
            position = FilePosition(self.name, tf.key, tf.path, end, fp, fp_len)
            await emit(LineBatch(self.name, self.config.tag, tf.key, tf.path, start, end, data, position))

    async def _release_due(self, emit: Emit) -> None:
        now = self.clock.monotonic()
        for key, held in list(self._held.items()):
            tf = self.files.get(key)
            if tf is None:
                del self._held[key]
                self._salvaged.pop(key, None)
            elif held and held.due(now) <= 0:
                await self._release(tf, emit)

    def _next_release(self, now: float) -> float:
        return min((held.due(now) for held in self._held.values() if held), default=self.config.rescan_interval)

    def _read_result(self, tf: TailedFile, final: bool) -> ReadResult | None:
        if not tf.rotated:
            # Before every read, not only at rescans: reading across a truncate would mix
            # the old content's offsets with the new content's lines.
            self._check_replaced(tf)
        return read_step(tf, self.config.read_bytes, self.config.max_line_bytes, self._blob_for, final)

    def _read(self, tf: TailedFile, final: bool) -> LineBatch | None:
        result = self._read_result(tf, final)
        return None if result is None else self._batch(tf, result)

    def _batch(self, tf: TailedFile, result: ReadResult) -> LineBatch:
        dead = [self._dead_entry(tf, entry) for entry in result.dead]
        return LineBatch(
            self.name, self.config.tag, tf.key, tf.path, result.start, result.end, result.data,
            tf.position(result.end), dead=dead,
        )

    def _blob_for(self, tf: TailedFile, offset: int) -> Path:
        return self.dead_letters.blob_path(self.name, tf.key, offset)

    def _dead_entry(self, tf: TailedFile, entry: dict[str, Any]) -> dict[str, Any]:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.time()))
        ident = f"{self.name}:{tf.key}:{entry['offset']}"
        return {"id": ident, "time": when, "source": self.name, "path": tf.path, **entry}

    def _forget_batch(self, key: str) -> LineBatch:
        return LineBatch(self.name, self.config.tag, key, "", 0, 0, b"", None, forget=True)

    # -- rotated files -----------------------------------------------------------------

    def _next_retirement(self, now: float) -> float:
        waits = [
            tf.idle_since + self.config.rotate_wait - now
            for tf in self.files.values()
            if tf.rotated and tf.idle_since is not None
        ]
        return min(waits, default=self.config.rescan_interval)

    async def _retire_rotated(self, emit: Emit) -> None:
        """Close rotated files that stayed idle for ``rotate_wait``, after a last read to their end."""
        now = self.clock.monotonic()
        for key, tf in list(self.files.items()):
            if not tf.rotated or tf.idle_since is None or now - tf.idle_since < self.config.rotate_wait:
                continue
            await self._release(tf, emit)
            while (batch := await asyncio.to_thread(self._read, tf, True)) is not None:
                await emit(batch)
            tf.close()
            del self.files[key]
            self._retired[key] = tf.position(tf.offset)
            # The position stays saved while the file exists, so a later look knows it is done.
            log.info("finished rotated file source=%s path=%s key=%s offset=%d", self.name, tf.path, key, tf.offset)

    # -- discovery (worker thread) -----------------------------------------------------

    async def _look(self) -> None:
        """Discover (worker thread), then watch the directories that concern the globs now."""
        directories = await asyncio.to_thread(self._discover)
        new = directories - self._watcher.directories
        self._watcher.watch(directories)
        self._guard.follow({tf.path: tf for tf in self.files.values() if not tf.rotated}, self._watcher.directories)
        if new & self._watcher.directories:
            # A file written or created between the listing and the new watch sent no event.
            self._dirty.update(self.files)
            self._rescan_requested = True

    def _discover(self) -> set[str]:
        """Match globs, notice rotations and replacements, and finish files rotated away.

        Returns the directories to watch.
        """
        since = self._files_new_since()
        matched = matched_files(self.config)
        for key, tf in self.files.items():
            self._update_tracked(tf, matched.get(key))
        for key, path in matched.items():
            if key not in self.files and not self._parked_unchanged(key, path):
                self._open(key, path)
        saved = self._known_positions()
        before = dict(saved)
        directories = {os.path.dirname(p) for p in matched.values()} | {os.path.dirname(p.path) for p in saved.values()}
        listing = list_directories(with_olddirs(directories, self.config.olddir))
        self._finish_saved(saved, listing, matched)
        names = {os.path.basename(p) for p in matched.values()} | {os.path.basename(p.path) for p in saved.values()}
        patterns = sibling_patterns(names, self.config.rotated_names)
        if since is None:
            self._recover_generations(listing, saved, before, patterns)
        else:
            self._catch_unseen(listing, saved, patterns, since)
        return directories_to_watch(self.config, matched.values())

    def _known_positions(self) -> dict[str, FilePosition]:
        """Committed positions, and where files retired since were read to (not committed yet, maybe).

        Without the latter, a look between a rotated file's retirement and the commit of its last
        batch would take it for a generation never seen, and read it again from its head.
        """
        saved = {p.key: p for p in self.positions.for_source(self.name)}
        for key, pos in list(self._retired.items()):
            committed = saved.get(key)
            if committed is not None and committed.offset >= pos.offset:
                del self._retired[key]  # on disk now
            else:
                saved[key] = pos
        return saved

    def _files_new_since(self) -> float | None:
        """The wall time from which a file's ctime means "appeared after the previous look".

        ctimes come from the wall clock, which NTP may step back between two looks: a file
        created after a step back has a ctime before the previous look's wall time. So the
        previous look is also placed on today's wall clock by the monotonic time since, and
        the earlier of the two is used (a step forward is covered by the recorded one).
        """
        wall, mono = self.clock.time(), self.clock.monotonic()
        previous, self._last_discovery = self._last_discovery, (wall, mono)
        if previous is None:
            return None
        return min(previous[0], wall - (mono - previous[1]))

    def _update_tracked(self, tf: TailedFile, path: str | None) -> None:
        if path is None:
            if not tf.rotated:
                log.info("file rotated away or deleted source=%s path=%s", self.name, tf.path)
                # One more read starts its rotate_wait: from now, not from when it was last written (a quiet
                # file would be closed at once, and its writer's last lines before it reopens lost).
                tf.idle_since = None
                self._dirty.add(tf.key)
            tf.rotated = True
            size = os.fstat(tf.fd).st_size
        else:
            tf.path, tf.rotated = path, False
            size = self._check_replaced(tf)
        # Only files with unread bytes: a rescan of 1,000 quiet files must not read them all.
        if size != tf.offset:
            self._dirty.add(tf.key)

    def _finish_saved(
        self, saved: dict[str, FilePosition], listing: dict[str, FoundFile], matched: dict[str, str]
    ) -> None:
        """Saved positions of files no glob matches: resume what grew, drop what is gone or replaced.

        A saved inode that now holds other bytes was freed and reused (a finished file was
        compressed away and a new file got its inode): the entry is stale and removed from
        ``saved``, so the new file counts as unseen.
        """
        for key, pos in list(saved.items()):
            if key in self.files or key in matched:
                continue
            found = listing.get(key)
            if found is None or not same_start(found.path, pos):
                del saved[key]
                self._forget(key)
            elif found.size > pos.offset:
                self._open(key, found.path, rotated=True)

    def _forget(self, key: str) -> None:
        self._retired.pop(key, None)
        if key not in self._forgotten:
            self._forgotten.add(key)
            self._pending_forget.append(key)

    def _catch_unseen(
        self, listing: dict[str, FoundFile], saved: dict[str, FilePosition], patterns: list[str], since: float
    ) -> None:
        """Siblings we never followed: copytruncate's copy, or a file created and rotated away unseen."""
        # (fingerprint, its length, file size) of each followed file: a sibling that starts with
        # the same bytes and is no longer may be a copy of it that copytruncate has not truncated yet.
        # Checked for a truncate again, here: logrotate's ftruncate may land after _update_tracked
        # looked, and a copy longer than its truncated original, with the old content's
        # fingerprint still on record, passed for a generation never seen and was read from its
        # head (every line again). Noticed now, the copy is found in _copied, read past the offset.
        tracked: list[tuple[str, int, int]] = []
        for tf in self.files.values():
            if not tf.rotated:
                size = self._check_replaced(tf)
                if tf.fp_len:
                    tracked.append((tf.fp, tf.fp_len, size))
        for key, found in listing.items():
            if key in self.files or key in saved or not is_sibling(found.path, patterns) or is_compressed(found.path):
                continue
            found_heads = head_fingerprints(found.path, {n for _, n in self._copied} | {n for _, n, _ in tracked})
            copied = next((k for k in self._copied if found_heads.get(k[1]) == k[0]), None)
            if copied is not None:
                # copytruncate's copy: it holds what the original had before the truncate; read
                # only past the point we had read the original to. Kept until the copy is open: if
                # logrotate renamed it meanwhile, the next look finds it and needs that offset still.
                if self._open(key, found.path, rotated=True, offset=self._copied[copied]):
                    del self._copied[copied]
            elif found.ctime >= since - 1.0 and not any(
                found_heads.get(n) == fp and found.size <= size for fp, n, size in tracked
            ):
                # Longer than every followed file it shares its first bytes with (files that all
                # start with the same header line): a generation rotated away unseen, not a copy.
                self._open(key, found.path, rotated=True, offset=0)

    # -- generations rotated away while the daemon was stopped ----------------------------

    def _recover_generations(
        self, listing: dict[str, FoundFile], saved: dict[str, FilePosition], before: dict[str, FilePosition],
        patterns: list[str],
    ) -> None:
        """At the first look: siblings created, copied or written since the last save before this start.

        A sibling with no saved position whose last write comes after that save was written
        while the daemon was stopped: a generation created and rotated away meanwhile (read
        from its head), or copytruncate's copy of a followed file (its first bytes are those
        a saved position was fingerprinted on, and that file was truncated since: read from
        the saved offset). A copy of a file that was not truncated holds nothing new. Older
        siblings were there before (already read, or left alone by ``read_from_head``).
        """
        stopped_at = self._last_save()
        if stopped_at is None:
            return
        truncated = {key: pos for key, pos in before.items() if replaced(pos, listing.get(key))}
        unseen = [
            (key, found) for key, found in listing.items()
            if key not in self.files and key not in saved and found.mtime >= stopped_at - MTIME_SLACK
            and is_sibling(found.path, patterns)
        ]
        for key, found in sorted(unseen, key=lambda item: item[1].mtime):
            if is_compressed(found.path):
                self._report_compressed(found.path, before)
                continue
            offset = copy_offset(found, before, truncated)
            if offset is not None:
                self._open(key, found.path, rotated=True, offset=offset)

    def _last_save(self) -> float | None:
        """When the position store was last written (before this start, at the first look)."""
        try:
            return self.positions.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _report_compressed(self, path: str, before: dict[str, FilePosition]) -> None:
        """A generation compressed before it was read (unless it starts like one read before)."""
        if not read_before_compressed(path, before):
                self._report_unreadable(path, why="compressed before it was read (use delaycompress)")

    async def _catch_up_rotated(self, emit: Emit) -> None:
        """After the first look: rotated files found then are read to their end, oldest first, before the rest."""
        rotated = sorted((tf for tf in self.files.values() if tf.rotated), key=lambda tf: os.fstat(tf.fd).st_mtime)
        for tf in rotated:
            while not self._stop.is_set() and (batch := await asyncio.to_thread(self._read, tf, False)) is not None:
                if batch.end > batch.start or batch.dead:
                    await emit(batch)

    def _check_replaced(self, tf: TailedFile) -> int:
        """copytruncate or rewrite in place: the file got shorter or its first bytes changed. Returns its size."""
        size = os.fstat(tf.fd).st_size
        if size >= tf.offset and tf.matches(tf.fp, tf.fp_len):
            return size
        log.warning(
            "file truncated or replaced in place source=%s path=%s offset=%d size=%d: reading from 0",
            self.name, tf.path, tf.offset, size,
        )
        # What the guard read of the old content since a copier opened it (its last lines may
        # be in no copy: written after the copy, before the truncate) goes out before the new
        # content; copytruncate's copy is read from where the old content was read to.
        salvaged = self._guard.take(tf, tf.offset)
        if salvaged:
            self._salvaged[tf.key] = (tf.offset, salvaged, tf.fp, tf.fp_len)
            self._dirty.add(tf.key)  # released at its next read: soon, even if nothing is written now
            tf.offset += len(salvaged)
        self._copied[(tf.fp, tf.fp_len)] = tf.offset
        if tf.fp_len:  # saved with the new content's positions, for a copy only the next start finds
            tf.copied = (tf.fp, tf.fp_len, tf.offset)
        # copytruncate made its copy before the truncate: look now, not at the next rescan (the copy's
        # name matches no pattern, so no event asks for a look), and a kill leaves less of it unread.
        self._rescan_requested = True
        tf.offset, tf.oversized = 0, None
        tf.fp, tf.fp_len = fingerprint(tf.fd, FP_BYTES)
        return size

    def _open(self, key: str, path: str, rotated: bool = False, offset: int | None = None) -> bool:
        """Follow the file ``key`` at ``path``; False if it cannot be now (the next look decides again)."""
        if len(self.files) >= self.config.max_open_files and not self._park_idlest():
            if path not in self._waiting:
                self._waiting.add(path)
                log.warning("max_open_files reached source=%s: %s waits for a free descriptor", self.name, path)
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            self._report_unreadable(path)
            return False
        except OSError:
            return False  # gone between listing and open; the next rescan decides
        if file_key(os.fstat(fd)) != key:
            # Renamed between the listing and the open (logrotate shifting .1 to .2 while a copy
            # takes .1): the path names another file now, which must not be read as this one (it
            # was, from its head: every line of a copy twice). The next look, soon, finds both.
            os.close(fd)
            self._rescan_requested = True
            return False
        self._unreadable.discard(path)
        self._waiting.discard(path)
        tf = TailedFile(self.name, key, path, fd, 0, rotated=rotated)
        tf.offset = self._start_offset(tf) if offset is None else offset
        tf.refresh_fingerprint()
        self.files[key] = tf
        self._forgotten.discard(key)
        self._dirty.add(key)
        what = "finishing rotated file" if rotated else "following file"
        log.info("%s source=%s path=%s offset=%d", what, self.name, path, tf.offset)
        return True

    def _start_offset(self, tf: TailedFile) -> int:
        """Where to start reading a newly opened file: its parked or saved position, else its head.

        A file with no saved position appeared after the first start (``read_from_head =
        false`` saves the first start's files' ends before any source runs: topology).
        """
        size = os.fstat(tf.fd).st_size
        parked = self._parked.pop(tf.key, None)
        if parked is not None and parked.offset <= size and tf.matches(parked.fingerprint, parked.fp_len):
            return parked.offset  # the read position, which may be ahead of the committed one
        saved = self.positions.get(self.name, tf.key)
        if saved is not None:
            if saved.offset <= size and tf.matches(saved.fingerprint, saved.fp_len):
                return saved.offset
            log.warning("file changed since its saved position (inode reused?) path=%s: reading from 0", tf.path)
            return 0
        return 0

    def _park_idlest(self) -> bool:
        """Close the file idle longest (at its end, still at its path) to free a descriptor."""
        idle = [
            tf for tf in self.files.values()
            if not tf.rotated and tf.idle_since is not None and not tf.oversized and not self._held.get(tf.key)
        ]
        if not idle:
            return False
        tf = min(idle, key=lambda t: t.idle_since or 0.0)
        self._parked[tf.key] = tf.position(tf.offset)
        tf.close()
        del self.files[tf.key]
        self._dirty.discard(tf.key)
        return True

    def _parked_unchanged(self, key: str, path: str) -> bool:
        parked = self._parked.get(key)
        if parked is None:
            return False
        try:
            return os.stat(path).st_size == parked.offset
        except OSError:
            return False

    def _report_unreadable(self, path: str, why: str = "") -> None:
        if path in self._unreadable:
            return
        self._unreadable.add(path)
        if why:
            log.error("cannot read rotated file source=%s path=%s: %s; its lines are not delivered",
                      self.name, path, why)
            return
        user = _current_user()
        log.error(
            "cannot read file source=%s path=%s user=%s: add the user to the file's group or grant an ACL "
            "(setfacl -m u:%s:r %s); it is picked up as soon as it becomes readable",
            self.name, path, user, user, path,
        )

    # -- notification ------------------------------------------------------------------

    def _note_changes(self, changes: Changes) -> None:
        """inotify events (on the event loop): mark files to read, ask for a rescan where needed."""
        # A rotated file's old path now names its successor; rotated files are read at rescans
        # and at retirement.
        known = {tf.path: key for key, tf in self.files.items() if not tf.rotated}
        if any(path in known for path in changes.opened):
            self._pacer.opened()
        written = False
        for path in changes.modified:
            key = known.get(path)
            if key is not None:
                self._dirty.add(key)
                written = True
            elif self._matches(path):
                self._rescan_requested = True  # a parked or not yet readable file
        for path in changes.other:
            key = known.get(path)
            if key is not None:
                self._dirty.add(key)
            if self._matches(path):
                self._rescan_requested = True  # new, renamed or deleted: look again now
        if changes.overflow:
            self._dirty.update(self.files)
            self._rescan_requested = True
        if self._rescan_requested or changes.overflow or (self._dirty and not written):
            self._wake.set()
        elif written:
            self._pacer.written()

    def _matches(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) for p in self.config.paths)


def _current_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())
