"""CopyGuard: a followed file opened by someone else is read at every write by the guard's thread,
and what was read before a truncate is handed over whole lines only, for the content it was read from."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pipeline.clock import FakeClock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.base import SourceContext
from pipeline.sources.tail import source as source_module
from pipeline.sources.tail.checkpoint import PositionStore
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.discovery import list_directories
from pipeline.sources.tail.guard import MAX_TARGETS, REOPENS, CopyGuard
from pipeline.sources.tail.reader import FP_BYTES, TailedFile, file_key, fingerprint
from pipeline.sources.tail.source import TailSource

HEAD = b'{"header": "' + b"h" * (FP_BYTES + 10) + b'"}\n'  # a full fingerprint's worth of first line


def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


@pytest.fixture
def followed(tmp_path: Path) -> Iterator[tuple[Path, TailedFile, int]]:
    """A file read to its end by the source (``tf``) and a writer's O_APPEND descriptor on it."""
    path = tmp_path / "agent.log"
    path.write_bytes(HEAD)
    fd = os.open(path, os.O_RDONLY)
    tf = TailedFile("agent", file_key(os.fstat(fd)), str(path), fd, len(HEAD))
    tf.fp, tf.fp_len = fingerprint(fd, FP_BYTES)
    writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    yield path, tf, writer
    os.close(writer)
    tf.close()


@pytest.fixture
def guard() -> Iterator[CopyGuard]:
    """A copy guard with a 1 MiB hold, closed (its thread joined) after the test."""
    copy_guard = CopyGuard(1 << 20)
    yield copy_guard
    copy_guard.close()


def guarding(guard: CopyGuard, tf: TailedFile) -> Callable[[], bool]:
    return lambda: tf.key in guard._targets


def opened_elsewhere(guard: CopyGuard, path: Path, tf: TailedFile) -> None:
    """The guard follows ``tf``; another process opens it (and closes it): the guard reads it from now on."""
    guard.follow({str(path): tf}, {str(path.parent)})
    with path.open("rb"):
        until(guarding(guard, tf))


def test_lines_written_before_a_truncate_are_taken_even_while_the_main_thread_is_busy(
    followed, guard: CopyGuard
) -> None:
    path, tf, writer = followed
    guard.follow({str(path): tf}, {str(path.parent)})
    copier = os.open(path, os.O_RDWR)  # logrotate's copytruncate opens the file
    until(guarding(guard, tf))
    os.write(writer, b'{"n": 1}\n')
    os.write(writer, b'{"n": 2}\n{"n": 3')  # the third line is not finished at the truncate
    # The main thread (the source's event loop) is busy in Python code: the guard's thread
    # still gets the GIL within the switch interval and reads the writes.
    spin_until = time.perf_counter() + 0.05
    while time.perf_counter() < spin_until:
        pass
    os.ftruncate(copier, 0)
    os.close(copier)
    os.write(writer, b'{"n": 4}\n')  # the new content
    assert guard.take(tf, tf.offset) == b'{"n": 1}\n{"n": 2}\n'
    assert guard.take(tf, tf.offset) == b""  # once


def test_only_what_the_source_has_not_read_is_taken(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    os.write(writer, b'{"n": 1}\n{"n": 2}\n')
    until(lambda: guard._targets[tf.key].end == len(HEAD) + 18)
    tf.offset += 9  # the source read the first line itself
    os.truncate(path, 0)
    assert guard.take(tf, tf.offset) == b'{"n": 2}\n'


def test_a_file_rewritten_with_other_content_gives_nothing(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    # Truncated and written past the old end at once: the bytes at the old offsets are new content.
    path.write_bytes(b'{"other": "' + b"o" * (len(HEAD) + 100) + b'"}\n')
    until(lambda: guard._targets[tf.key].done)
    assert guard.take(tf, tf.offset) == b""


def test_files_not_opened_by_anyone_else_are_not_read(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    guard.follow({str(path): tf}, {str(path.parent)})
    os.write(writer, b'{"n": 1}\n')  # the writer's descriptor was opened before: no open event
    (path.parent / "other.log").write_bytes(b"x\n")  # an open of a file that is not followed
    time.sleep(0.05)  # nothing to poll for: the guard must stay idle
    assert not guard._targets
    os.truncate(path, 0)
    assert guard.take(tf, tf.offset) == b""


def test_a_file_no_longer_followed_is_let_go(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    guard.follow({}, {str(path.parent)})
    assert not guard._targets


def opens_seen(guard: CopyGuard, tf: TailedFile, count: int) -> bool:
    target = guard._targets.get(tf.key)
    return bool(guard._muted) or (target is not None and target.opens >= count)


def test_a_writer_that_opens_the_file_for_every_write_is_not_read_at_every_write(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    guard.follow({str(path): tf}, {str(path.parent)})
    for n in range(REOPENS + 1):  # open, write, close: create-mode logging
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b'{"n": %d}\n' % n)
        os.close(fd)
        # Each open seen before the next (the kernel merges an unread event identical to the last).
        until(partial(opens_seen, guard, tf, n + 1))
    until(lambda: str(path.parent) in guard._muted)
    assert not guard._targets and not guard._directories  # its opens no longer wake the guard


def test_no_more_files_are_guarded_at_once_than_max_targets(tmp_path: Path, guard: CopyGuard) -> None:
    # Each guarded file holds a descriptor beyond max_open_files: a process opening many followed
    # files (one open each) must not have them all guarded.
    files = {}
    for n in range(MAX_TARGETS + 3):
        path = tmp_path / f"agent-{n}.log"
        path.write_bytes(HEAD)
        fd = os.open(path, os.O_RDONLY)
        tf = TailedFile("agent", file_key(os.fstat(fd)), str(path), fd, len(HEAD))
        tf.fp, tf.fp_len = fingerprint(fd, FP_BYTES)
        files[str(path)] = tf
    try:
        guard.follow(files, {str(tmp_path)})
        for name in files:
            with open(name, "rb"):
                pass
        first = next(iter(files.values()))
        with open(first.path, "rb"):  # seen after every open above (inotify keeps their order)
            until(lambda: first.key in guard._targets and guard._targets[first.key].opens >= 2)
        assert len(guard._targets) == MAX_TARGETS
    finally:
        for tf in files.values():
            tf.close()


def test_an_open_seen_while_closing_leaves_no_descriptor_behind(followed) -> None:
    path, tf, writer = followed
    guard = CopyGuard(1 << 20)
    guard.follow({str(path): tf}, {str(path.parent)})
    assert guard._inotify is not None
    inotify = guard._inotify
    read_events = inotify.read
    in_read = threading.Event()

    def read_then_wait_for_close(timeout: int | None = None) -> list[Any]:
        # The guard's thread has its events in hand (outside the lock) when close() runs.
        events: list[Any] = read_events(timeout=timeout)
        if events:
            in_read.set()
            until(lambda: guard._closed)
        return events

    inotify.read = read_then_wait_for_close
    before = set(os.listdir("/proc/self/fd"))
    with path.open("rb"):
        assert in_read.wait(5.0)
        guard.close()
    assert not guard._targets
    assert set(os.listdir("/proc/self/fd")) <= before  # no dup of the followed file left open


def test_a_truncate_landing_during_a_look_does_not_make_the_copy_read_from_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    content = HEAD + b"".join(b'{"n": %d}\n' % n for n in range(100))
    (logs / "agent.log").write_bytes(content)
    config = TailSourceConfig(type="tail", paths=[str(logs / "agent.log")], tag="ai")
    positions = PositionStore(tmp_path / "positions.json")
    clock = FakeClock(time.time())
    source = TailSource("agent", config, SourceContext(positions, DeadLetterStore(tmp_path / "dead"), clock, tmp_path))
    try:
        source._discover()
        (tf,) = source.files.values()
        while source._read(tf, False) is not None:  # the source has read (and emitted) everything
            pass
        assert tf.offset == len(content)
        clock.advance(5)
        (logs / "agent.log.1").write_bytes(content)  # logrotate's copy...

        def truncated_meanwhile(directories: set[str]) -> dict[str, Any]:
            os.truncate(logs / "agent.log", 0)  # ...and its ftruncate, after the look checked agent.log
            return list_directories(directories)

        monkeypatch.setattr(source_module, "list_directories", truncated_meanwhile)
        source._discover()
        copies = [t for t in source.files.values() if t.path.endswith(".1")]
        # Every line of the copy was emitted from agent.log already: none may be read again.
        assert all(copy.offset >= len(content) for copy in copies)
    finally:
        for t in source.files.values():
            t.close()


def test_a_kill_after_the_new_content_is_committed_does_not_read_the_copy_again(tmp_path: Path) -> None:
    # The new content's committed position carries the old content's fingerprint and read offset
    # (FilePosition.copy_*), so the next start reads the copy only past them.
    logs = tmp_path / "logs"
    logs.mkdir()
    old = HEAD + b"".join(b'{"n": %d}\n' % n for n in range(100))
    (logs / "agent.log").write_bytes(old)
    config = TailSourceConfig(type="tail", paths=[str(logs / "agent.log")], tag="ai")

    def started() -> TailSource:
        positions = PositionStore(tmp_path / "positions.json")
        positions.load()
        context = SourceContext(positions, DeadLetterStore(tmp_path / "dead"), FakeClock(time.time()), tmp_path)
        return TailSource("agent", config, context)

    source = started()
    source._discover()
    (tf,) = source.files.values()
    while (batch := source._read(tf, False)) is not None:
        assert batch.position is not None
        source.positions.save_now({("agent", tf.key): batch.position})  # committed
    (logs / "agent.log.1").write_bytes(old)  # copytruncate: copy, truncate, the writer goes on
    os.truncate(logs / "agent.log", 0)
    with open(logs / "agent.log", "ab") as f:
        f.write(b'{"new": "' + b"x" * FP_BYTES + b'"}\n')
    batch = source._read(tf, False)  # the truncate is noticed, the new content read and committed...
    assert batch is not None and batch.position is not None and batch.start == 0
    source.positions.save_now({("agent", tf.key): batch.position})
    tf.close()  # ...and the daemon is killed before its next look found the copy

    restarted = started()
    try:
        restarted._discover()
        copies = [t for t in restarted.files.values() if t.path.endswith(".1")]
        assert all(copy.offset >= len(old) for copy in copies)  # every line of the copy was delivered
    finally:
        for t in restarted.files.values():
            t.close()
