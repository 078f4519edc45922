"""CopyGuard: a followed file opened by someone else is read at every write by the guard's helper
process, and what was read before a truncate is handed over whole lines only, for the content it
was read from; the helper leaves with the daemon."""

from __future__ import annotations

import asyncio
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pipeline.clock import FakeClock, SystemClock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.base import LineBatch, SourceContext
from pipeline.sources.tail import source as source_module
from pipeline.sources.tail.checkpoint import PositionStore
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.discovery import list_directories
from pipeline.sources.tail.guard import HELPER_NICE, PACKAGE_ROOT, SLOTS, CopyGuard
from pipeline.sources.tail.guard_helper import MAX_TARGETS, REOPENS, SLOT, Followed, Helper
from pipeline.sources.tail.heads import FP_BYTES, fingerprint, head_digest
from pipeline.sources.tail.reader import TailedFile, file_key
from pipeline.sources.tail.source import TailSource

HEAD = b'{"header": "' + b"h" * (FP_BYTES + 10) + b'"}\n'  # a full fingerprint's worth of first line


def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not waited for, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
    """A copy guard with a 1 MiB hold, closed (its helper gone) after the test."""
    copy_guard = CopyGuard(1 << 20)
    yield copy_guard
    copy_guard.close()


@pytest.fixture
def helper() -> Iterator[tuple[Helper, CopyGuard]]:
    """The helper's loop in a thread of the test (its state can be looked at), and a CopyGuard whose
    messages and shared memory reach it, as the daemon's would reach the helper process."""
    ours, theirs = socket.socketpair()
    memory_fd = os.memfd_create("test-guard")
    os.ftruncate(memory_fd, SLOTS * SLOT.size)
    offsets, published = mmap.mmap(memory_fd, SLOTS * SLOT.size), mmap.mmap(memory_fd, SLOTS * SLOT.size)
    os.close(memory_fd)
    state = Helper(theirs.detach(), offsets, 1 << 20)
    thread = threading.Thread(target=state.serve, daemon=True)
    thread.start()
    copy_guard = CopyGuard(1 << 20)
    copy_guard._conn, copy_guard._memory = ours, published
    copy_guard._process = subprocess.Popen(["true"])  # stands for the helper: follow() starts none
    yield state, copy_guard
    copy_guard.close()
    thread.join(5.0)
    assert not thread.is_alive()
    offsets.close()


def opened_elsewhere(guard: CopyGuard, path: Path, tf: TailedFile) -> None:
    """The guard follows ``tf``; another process opens it (and closes it): the guard reads it from now on."""
    guard.follow({str(path): tf}, {str(path.parent)})
    assert guard.guarded() == {}  # answered: the helper runs and watches the directory
    with path.open("rb"):
        until(lambda: tf.key in guard.guarded())


def test_lines_written_before_a_truncate_are_taken_even_while_the_daemon_is_busy(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    guard.follow({str(path): tf}, {str(path.parent)})
    assert guard.guarded() == {}  # answered: the helper runs and watches the directory
    copier = os.open(path, os.O_RDWR)  # logrotate's copytruncate opens the file
    until(lambda: tf.key in guard.guarded())
    os.write(writer, b'{"n": 1}\n')
    os.write(writer, b'{"n": 2}\n{"n": 3')  # the third line is not finished at the truncate
    # The daemon (here: this process) runs Python code and holds its GIL: the helper process reads
    # the writes all the same, with no wait for this interpreter.
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
    until(lambda: guard.guarded().get(tf.key) == len(HEAD) + 18)
    tf.offset += 9  # the source read the first line itself...
    guard.note(tf)  # ...and says so after the read
    os.truncate(path, 0)
    assert guard.take(tf, tf.offset) == b'{"n": 2}\n'


def test_what_the_source_has_read_is_not_kept(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    os.write(writer, b'{"n": 1}\n')
    until(lambda: guard.guarded().get(tf.key) == len(HEAD) + 9)
    tf.offset += 9
    guard.note(tf)
    os.write(writer, b'{"n": 2}\n')  # the helper drops what lies before the source's offset at this read
    until(lambda: guard.guarded().get(tf.key) == len(HEAD) + 18)
    os.truncate(path, 0)
    assert guard.take(tf, tf.offset - 9) == b""  # before what the helper holds: nothing (no half answer)


def test_a_file_rewritten_with_other_content_gives_nothing(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    # Truncated and written past the old end at once: the bytes at the old offsets are new content.
    path.write_bytes(b'{"other": "' + b"o" * (len(HEAD) + 100) + b'"}\n')
    assert guard.take(tf, tf.offset) == b""


def test_files_not_opened_by_anyone_else_are_not_read(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    guard.follow({str(path): tf}, {str(path.parent)})
    assert guard.guarded() == {}  # answered: the helper runs and watches the directory
    os.write(writer, b'{"n": 1}\n')  # the writer's descriptor was opened before: no open event
    (path.parent / "other.log").write_bytes(b"x\n")  # an open of a file that is not followed
    time.sleep(0.05)  # nothing to poll for: the helper must stay idle
    assert guard.guarded() == {}
    os.truncate(path, 0)
    assert guard.take(tf, tf.offset) == b""


def test_a_file_no_longer_followed_is_let_go(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    guard.follow({}, {str(path.parent)})
    assert guard.guarded() == {}  # the helper answers in the order it is told


def opens_seen(state: Helper, tf: TailedFile, count: int) -> bool:
    target = state.targets.get(tf.key)
    return bool(state.muted) or (target is not None and target.opens >= count)


def test_a_writer_that_opens_the_file_for_every_write_is_not_read_at_every_write(followed, helper) -> None:
    path, tf, writer = followed
    state, guard = helper
    guard.follow({str(path): tf}, {str(path.parent)})
    until(lambda: bool(state.directories))
    for n in range(REOPENS + 1):  # open, write, close: create-mode logging
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b'{"n": %d}\n' % n)
        os.close(fd)
        # Each open seen before the next (the kernel merges an unread event identical to the last),
        # the helper's own open at the first one too.
        until(partial(opens_seen, state, tf, n + 2))
    until(lambda: str(path.parent) in state.muted)
    assert not state.targets and not state.directories  # its opens no longer wake the helper


def test_no_more_files_are_guarded_at_once_than_max_targets(tmp_path: Path, helper) -> None:
    # Each guarded file holds a descriptor in the helper: a process opening many followed files
    # (one open each) must not have them all guarded.
    state, guard = helper
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
        until(lambda: bool(state.directories))
        for name in files:
            with open(name, "rb"):
                pass
        # Every open seen: ours, and the helper's own of each file it guards (distinct files: no
        # event merged with another).
        until(lambda: state.opens_seen >= len(files) + MAX_TARGETS)
        assert len(state.targets) == MAX_TARGETS
    finally:
        for tf in files.values():
            tf.close()


def test_close_stops_the_helper_and_leaves_no_descriptor_behind(followed) -> None:
    path, tf, writer = followed
    before = set(os.listdir("/proc/self/fd"))
    guard = CopyGuard(1 << 20)
    opened_elsewhere(guard, path, tf)
    assert guard._process is not None
    process = guard._process
    os.kill(process.pid, signal.SIGTERM)  # a stop signal to the process group is the daemon's to handle
    assert process.pid in {int(p) for p in os.listdir("/proc") if p.isdigit()} and alive(process.pid)
    assert tf.key in guard.guarded()
    guard.close()
    assert process.returncode == 0  # it left when told
    assert set(os.listdir("/proc/self/fd")) <= before


def test_the_helper_leaves_when_the_daemon_is_killed(followed, tmp_path: Path) -> None:
    path, tf, writer = followed
    daemon_code = textwrap.dedent(f"""
        import os, sys, time
        from pipeline.sources.tail.guard import CopyGuard
        from pipeline.sources.tail.reader import TailedFile, file_key
        from pipeline.sources.tail.heads import FP_BYTES, fingerprint
        fd = os.open({str(path)!r}, os.O_RDONLY)
        tf = TailedFile("agent", file_key(os.fstat(fd)), {str(path)!r}, fd, {len(HEAD)})
        tf.fp, tf.fp_len = fingerprint(fd, FP_BYTES)
        guard = CopyGuard(1 << 20)
        guard.follow({{tf.path: tf}}, {{{str(path.parent)!r}}})
        guard.guarded()  # the helper runs
        print(guard._process.pid, flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    with subprocess.Popen([sys.executable, "-c", daemon_code], stdout=subprocess.PIPE, env=env) as daemon:
        assert daemon.stdout is not None
        helper_pid = int(daemon.stdout.readline())
        assert alive(helper_pid)
        daemon.kill()  # kill -9: no close(), the helper sees its socket's end
        daemon.wait()
        until(lambda: not alive(helper_pid))


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


def test_a_hung_helper_neither_blocks_the_daemon_nor_outlives_its_stop(
    followed, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A helper that stops answering (SIGSTOP here; a read stuck on a dead mount) while the daemon
    sends it more than a socket buffer holds: the send gives up, the helper is killed, logged once."""
    from pipeline.sources.tail import guard as guard_module

    monkeypatch.setattr(guard_module, "TAKE_WAIT", 0.5)
    monkeypatch.setattr(guard_module, "CLOSE_WAIT", 0.5)
    path, tf, writer = followed
    guard = CopyGuard(1 << 20)
    guard.follow({str(path): tf}, {str(path.parent)})
    assert guard.guarded() == {}  # the helper runs
    process = guard._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    # Thousands of followed files with long names: one follow message larger than the socket's buffers.
    many = {
        f"{path.parent}/{'x' * 200}-{n}.log": TailedFile("agent", f"0:{n}", f"{path.parent}/{'x' * 200}-{n}.log", -1, 0)
        for n in range(3000)
    }
    done = threading.Event()

    def daemon() -> None:
        guard.follow(many, {str(path.parent)})
        guard.close()
        done.set()

    thread = threading.Thread(target=daemon, daemon=True)
    thread.start()
    try:
        assert done.wait(10.0), "the daemon blocked on a hung helper"
    finally:
        if not done.is_set():
            os.kill(process.pid, signal.SIGKILL)
            thread.join(5.0)
    assert process.returncode is not None and not alive(process.pid)
    assert [r.message for r in caplog.records if "guard stopped" in r.message][1:] == []  # once
    assert any("guard stopped" in r.message for r in caplog.records)


def tail_source(tmp_path: Path) -> tuple[Path, TailSource]:
    """A tail source following ``logs/agent.log`` (a full fingerprint's worth of first line)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(HEAD)
    config = TailSourceConfig(type="tail", paths=[str(logs / "agent.log")], tag="ai")
    context = SourceContext(PositionStore(tmp_path / "positions.json"), DeadLetterStore(tmp_path / "dead"),
                            SystemClock(), tmp_path)
    return logs / "agent.log", TailSource("agent", config, context)


async def polled(condition: Callable[[], bool], within: float = 5.0) -> None:
    """``until`` for a coroutine: the event loop runs meanwhile."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_a_copytruncate_while_the_loop_is_busy_emits_every_line_once(tmp_path: Path) -> None:
    # The source's loop is blocked from the copier's open to the truncate: the lines written after
    # the copy reach the source from the helper only, those before it from the helper, not the copy.
    path, source = tail_source(tmp_path)
    lines: list[bytes] = []

    async def emit(batch: LineBatch) -> None:
        lines.extend(batch.data.splitlines())

    def numbered(first: int, last: int) -> bytes:
        return b"".join(b'{"n": %d}\n' % n for n in range(first, last))

    async def scenario() -> None:
        running = asyncio.create_task(source.run(emit))
        writer = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(writer, numbered(0, 10))
            await polled(lambda: len(lines) == 11)
            (tf,) = source.files.values()
            assert source._guard.guarded() == {}  # answered: the helper runs and watches the directory
            # From here to the truncate, no await: the loop is busy.
            copier = os.open(path, os.O_RDWR)
            until(lambda: tf.key in source._guard.guarded())
            os.write(writer, numbered(10, 20))
            (path.parent / "agent.log.1").write_bytes(os.pread(copier, 1 << 20, 0))  # the copy
            os.write(writer, numbered(20, 30))  # after the copy: in no copy
            size = os.fstat(writer).st_size
            until(lambda: source._guard.guarded().get(tf.key) == size)
            os.ftruncate(copier, 0)
            os.close(copier)
            os.write(writer, b'{"new": "' + b"y" * FP_BYTES + b'"}\n' + numbered(30, 40))
            await polled(lambda: len(lines) >= 41)
            await asyncio.sleep(0.3)  # a look finds the copy: nothing of it may come again
            source._rescan_requested = True
            source._wake.set()
            await asyncio.sleep(0.3)
        finally:
            os.close(writer)
            source.stop()
            await running

    asyncio.run(scenario())
    numbers = [line for line in lines if line.startswith(b'{"n"')]
    assert numbers == numbered(0, 40).splitlines()  # each once, in order


def test_a_source_stopped_or_cancelled_leaves_no_helper_and_no_descriptor(tmp_path: Path) -> None:
    path, source = tail_source(tmp_path)
    before = set(os.listdir("/proc/self/fd"))

    async def emit(batch: LineBatch) -> None:
        pass

    async def scenario(cancel: bool) -> int:
        running = asyncio.create_task(source.run(emit))
        await polled(lambda: source._guard._process is not None)
        process = source._guard._process
        assert process is not None
        assert source._guard.guarded() == {}  # answered: the helper runs and watches the directory
        with path.open("rb"):  # the helper guards the file: one more descriptor of its own
            until(lambda: bool(source._guard.guarded()))
        if cancel:  # the daemon's stop deadline passed: its tasks are cancelled
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
        else:
            source.stop()
            await running
        return process.pid

    pid = asyncio.run(scenario(cancel=False))
    assert not alive(pid)
    (tmp_path / "again").mkdir()
    path, source = tail_source(tmp_path / "again")
    pid = asyncio.run(scenario(cancel=True))
    assert not alive(pid)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_truncated_file_read_from_0_again_is_kept_from_0(followed, guard: CopyGuard) -> None:
    # The source found agent.log truncated and rewritten, and follows its new content from 0;
    # before it reads any of it, a copier opens it: the helper keeps what lies past 0, not past
    # the old content's offset (which the file's slot held until the source's next read).
    path, tf, writer = followed
    guard.follow({str(path): tf}, {str(path.parent)})
    assert guard.guarded() == {}
    os.truncate(path, 0)
    new = b'{"new": "' + b"y" * FP_BYTES + b'"}\n' + b'{"n": 1}\n' * 20
    os.write(writer, new)
    tf.offset = 0  # the source's _check_replaced
    tf.fp, tf.fp_len = fingerprint(tf.fd, FP_BYTES)
    guard.follow({str(path): tf}, {str(path.parent)})  # the look it asks for
    with path.open("rb"):
        until(lambda: tf.key in guard.guarded())
    assert guard.take(tf, tf.offset) == new


def test_a_dead_helper_is_said_once_and_the_guard_goes_on_without_it(
    followed, guard: CopyGuard, caplog: pytest.LogCaptureFixture
) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    process = guard._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert guard.take(tf, tf.offset) == b""  # nothing to hand back: the source reads on, as without a guard
    guard.note(tf)
    guard.follow({str(path): tf}, set())  # the next look: no new helper, no error
    assert guard.take(tf, tf.offset) == b""
    assert guard.guarded() == {}
    assert [r.levelname for r in caplog.records if "guard stopped" in r.message] == ["ERROR"]
    assert guard._process is None


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root, CAP_SYS_NICE or LimitNICE")
def test_the_helper_runs_ahead_of_the_writers_when_allowed(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    assert guard._process is not None
    assert os.getpriority(os.PRIO_PROCESS, guard._process.pid) == HELPER_NICE
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the daemon's own stays


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="dropping CAP_SYS_NICE needs root")
def test_a_refused_priority_is_said_and_the_helper_guards_all_the_same(followed) -> None:
    path, tf, writer = followed
    daemon_code = textwrap.dedent(f"""
        import logging, os
        from pipeline.sources.tail.guard import CopyGuard
        from pipeline.sources.tail.reader import TailedFile, file_key
        from pipeline.sources.tail.heads import FP_BYTES, fingerprint
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        fd = os.open({str(path)!r}, os.O_RDONLY)
        tf = TailedFile("agent", file_key(os.fstat(fd)), {str(path)!r}, fd, {len(HEAD)})
        tf.fp, tf.fp_len = fingerprint(fd, FP_BYTES)
        guard = CopyGuard(1 << 20)
        guard.follow({{tf.path: tf}}, {{{str(path.parent)!r}}})
        guard.guarded()  # answered: the helper runs and watches the directory
        print(os.getpriority(os.PRIO_PROCESS, guard._process.pid), flush=True)
        copier = os.open(tf.path, os.O_RDWR)
        while tf.key not in guard.guarded():
            pass
        os.write(os.open(tf.path, os.O_WRONLY | os.O_APPEND), b'{{"n": 1}}\\n')
        while guard.guarded()[tf.key] == {len(HEAD)}:
            pass
        os.ftruncate(copier, 0)
        print(guard.take(tf, tf.offset).decode(), end="", flush=True)
        guard.close()
    """)
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    # root without CAP_SYS_NICE, and RLIMIT_NICE at 0 (the default): what an unprivileged daemon meets.
    done = subprocess.run(["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--", sys.executable,
                           "-c", daemon_code], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout == '0\n{"n": 1}\n'  # at the daemon's priority, and it still kept the line
    assert f"copytruncate guard runs at the daemon's priority (nice {HELPER_NICE} refused" in done.stderr


def test_a_file_empty_at_the_last_look_is_guarded_once_written_again(tmp_path: Path, guard: CopyGuard) -> None:
    # Rotations a fraction of a second apart: the look after a truncate found the file empty (no
    # fingerprint yet), and the next copier came before the next look.
    path = tmp_path / "agent.log"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    tf = TailedFile("agent", file_key(os.fstat(fd)), str(path), fd, 0)
    tf.fp, tf.fp_len = fingerprint(fd, FP_BYTES)
    assert tf.fp_len == 0
    writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        guard.follow({str(path): tf}, {str(path.parent)})
        assert guard.guarded() == {}
        os.write(writer, b'{"n": 1}\n')
        tf.offset = 9  # the source read it, and fingerprinted the file further as it grew
        tf.refresh_fingerprint()
        guard.note(tf)
        with path.open("rb"):  # the copier
            until(lambda: tf.key in guard.guarded())
        os.write(writer, b'{"n": 2}\n' + HEAD)  # the file grows past what the source fingerprinted
        until(lambda: guard.guarded().get(tf.key) == 18 + len(HEAD))
        os.truncate(path, 0)
        assert guard.take(tf, tf.offset) == b'{"n": 2}\n' + HEAD
    finally:
        os.close(writer)
        tf.close()


def test_a_fingerprint_grown_since_the_guard_began_still_takes_from_the_same_content(
    tmp_path: Path, guard: CopyGuard
) -> None:
    path = tmp_path / "agent.log"
    path.write_bytes(b'{"n": 0}\n')
    fd = os.open(path, os.O_RDONLY)
    tf = TailedFile("agent", file_key(os.fstat(fd)), str(path), fd, 9)
    tf.fp, tf.fp_len = fingerprint(fd, FP_BYTES)
    writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        opened_elsewhere(guard, path, tf)
        os.write(writer, HEAD)
        tf.offset += len(HEAD)  # the source read on and fingerprinted 1,024 bytes...
        tf.refresh_fingerprint()
        guard.note(tf)
        guard.follow({str(path): tf}, {str(path.parent)})  # ...and a look told the helper: still guarded
        os.write(writer, b'{"n": 2}\n')
        until(lambda: guard.guarded().get(tf.key) == tf.offset + 9)
        os.truncate(path, 0)
        assert guard.take(tf, tf.offset) == b'{"n": 2}\n'
    finally:
        os.close(writer)
        tf.close()


def test_a_take_for_another_contents_fingerprint_gets_nothing(followed, guard: CopyGuard) -> None:
    path, tf, writer = followed
    opened_elsewhere(guard, path, tf)
    os.write(writer, b'{"n": 1}\n')
    until(lambda: guard.guarded().get(tf.key) == len(HEAD) + 9)
    os.truncate(path, 0)
    tf.fp = head_digest(b"x" * tf.fp_len)  # the source read other bytes than the helper
    assert guard.take(tf, tf.offset) == b""


def test_a_fingerprint_grown_before_the_helper_read_the_growth_keeps_the_file_guarded(tmp_path: Path) -> None:
    # The order CI once met: the helper's loop had read the file just before the write, and the
    # source read the write, fingerprinted further and said so before the helper's next read. The
    # helper compared the longer fingerprint with the shorter head it held and let the file go.
    path = tmp_path / "agent.log"
    path.write_bytes(b'{"n": 0}\n')
    fd = os.open(path, os.O_RDONLY)
    tf = TailedFile("agent", file_key(os.fstat(fd)), str(path), fd, 9)
    tf.fp, tf.fp_len = fingerprint(fd, FP_BYTES)
    ours, theirs = socket.socketpair()
    offsets = mmap.mmap(-1, SLOT.size)
    state = Helper(theirs.detach(), offsets, 1 << 20)
    writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        SLOT.pack_into(offsets, 0, tf.offset)
        state.follow({str(path): Followed(tf.key, tf.fp, tf.fp_len, 0)}, set())
        state.guard(str(path))  # the copier's open
        assert tf.key in state.targets
        os.write(writer, HEAD)
        tf.offset += len(HEAD)  # the source read it, fingerprinted 1,024 bytes, stored its offset...
        tf.refresh_fingerprint()
        SLOT.pack_into(offsets, 0, tf.offset)
        state.follow({str(path): Followed(tf.key, tf.fp, tf.fp_len, 0)}, set())  # ...and said so
        assert tf.key in state.targets
        os.write(writer, b'{"n": 2}\n')
        assert state.take(tf.key, tf.fp, tf.fp_len, tf.offset) == b'{"n": 2}\n'
    finally:
        os.close(writer)
        tf.close()
        ours.close()
        state.serve()  # returns at the socket's end, every descriptor of the helper's closed
        offsets.close()
