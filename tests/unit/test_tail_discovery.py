"""TailSource discovery: a file rotated away before logferry looked is found, even after the wall clock stepped back."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path
from typing import Any

from pipeline.clock import FakeClock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.base import SourceContext
from pipeline.sources.tail.checkpoint import FilePosition, PositionStore
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.generations import head_fingerprints
from pipeline.sources.tail.heads import FP_BYTES, fingerprint
from pipeline.sources.tail.reader import file_key
from pipeline.sources.tail.source import TailSource


def tail_source(tmp_path: Path, clock: FakeClock, **settings: Any) -> TailSource:
    config = TailSourceConfig(type="tail", paths=[str(tmp_path / "logs" / "agent.log")], tag="ai", **settings)
    positions = PositionStore(tmp_path / "positions.json")
    positions.load()
    return TailSource("agent", config, SourceContext(positions, DeadLetterStore(tmp_path / "dead"), clock, tmp_path))


def test_a_file_rotated_away_unseen_after_the_clock_stepped_back_is_still_read(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(b'{"n":1}\n')
    clock = FakeClock(time.time() + 3600)  # the host clock runs an hour fast...
    source = tail_source(tmp_path, clock)
    try:
        source._discover()
        clock.advance(5)
        clock.set_wall(time.time())  # ...until NTP steps it back to the real time

        # Written and rotated away between two looks: its ctime is before the previous look's wall time.
        (logs / "agent.log.1").write_bytes(b'{"n":2}\n')
        clock.advance(5)
        source._discover()

        assert sorted(Path(tf.path).name for tf in source.files.values()) == ["agent.log", "agent.log.1"]
    finally:
        for tf in source.files.values():
            tf.close()


def test_a_file_seen_before_the_previous_look_is_not_taken_for_a_new_one(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(b'{"n":1}\n')
    (logs / "agent.log.1").write_bytes(b'{"n":0}\n')  # an old rotation, there before logferry started
    clock = FakeClock(time.time() + 120)
    source = tail_source(tmp_path, clock)
    try:
        source._discover()
        clock.advance(60)
        source._discover()

        assert [Path(tf.path).name for tf in source.files.values()] == ["agent.log"]
    finally:
        for tf in source.files.values():
            tf.close()


HEADER = b'{"event":"session-start","service":"agent"}\n'  # every generation starts with this line


def test_a_generation_rotated_away_unseen_is_read_even_when_every_file_starts_with_the_same_line(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(HEADER)
    clock = FakeClock(time.time())
    source = tail_source(tmp_path, clock)
    try:
        source._discover()
        clock.advance(5)
        # Two rotations between two looks: the middle generation was never followed, and the
        # new agent.log so far holds only the header the unseen file also starts with.
        (logs / "agent.log").rename(logs / "agent.log.2")
        (logs / "agent.log.1").write_bytes(HEADER + b'{"id":"b1"}\n')
        (logs / "agent.log").write_bytes(HEADER)
        clock.advance(5)
        source._discover()

        # The first generation is still followed under the name it had (rotated away), the new
        # agent.log is followed, and so is the unseen one.
        assert sorted(Path(tf.path).name for tf in source.files.values()) == ["agent.log", "agent.log",
                                                                              "agent.log.1"]
    finally:
        for tf in source.files.values():
            tf.close()


def test_a_copy_of_the_followed_file_not_truncated_yet_is_not_read_twice(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(HEADER + b'{"id":"a1"}\n')
    clock = FakeClock(time.time())
    source = tail_source(tmp_path, clock)
    try:
        source._discover()
        clock.advance(5)
        # copytruncate seen between its copy and its truncate: the copy holds what agent.log holds.
        (logs / "agent.log.1").write_bytes((logs / "agent.log").read_bytes())
        clock.advance(5)
        source._discover()

        assert [Path(tf.path).name for tf in source.files.values()] == ["agent.log"]
    finally:
        for tf in source.files.values():
            tf.close()


# -- at start: generations rotated away while the daemon was stopped ----------------------------


def saved_state(tmp_path: Path, path: Path, offset: int | None = None) -> None:
    """A position store as a previous run left it: ``path`` committed to ``offset`` (its end), saved
    a minute ago; every file already there is older than that save."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fp, fp_len = fingerprint(fd, FP_BYTES)
        key = file_key(os.fstat(fd))
    finally:
        os.close(fd)
    store = PositionStore(tmp_path / "positions.json")
    end = path.stat().st_size if offset is None else offset
    store.save_now({("agent", key): FilePosition("agent", key, str(path), end, fp, fp_len)})
    now = time.time()
    for old in path.parent.iterdir():
        os.utime(old, (now - 120, now - 120))
    os.utime(store.path, (now - 60, now - 60))


def lines(tag: str, count: int) -> bytes:
    return b"".join(b'{"gen":"%s","n":%d}\n' % (tag.encode(), n) for n in range(count))


def opened(source: TailSource) -> dict[str, int]:
    """Followed file name → the offset it is read from."""
    return {os.path.relpath(tf.path, source.config.paths[0].rsplit("/", 1)[0]): tf.offset
            for tf in source.files.values()}


def start(tmp_path: Path, **config: Any) -> TailSource:
    source = tail_source(tmp_path, FakeClock(time.time()), **config)
    source._discover()
    return source


def close(source: TailSource) -> None:
    for tf in source.files.values():
        tf.close()


def test_at_start_dateext_generations_rotated_away_while_stopped_are_read(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(lines("a", 10))
    (logs / "agent.log-20261201-1796100000").write_bytes(lines("old", 5))  # read by an earlier run
    saved_state(tmp_path, logs / "agent.log")
    a_end = (logs / "agent.log").stat().st_size
    # While stopped: a goes on, is rotated (dateext), b is created, written, rotated; c is new.
    with open(logs / "agent.log", "ab") as f:
        f.write(lines("a-more", 3))
    (logs / "agent.log").rename(logs / "agent.log-20261202-1796240763")
    (logs / "agent.log").write_bytes(lines("b", 7))
    (logs / "agent.log").rename(logs / "agent.log-20261202-1796240800")
    (logs / "agent.log").write_bytes(lines("c", 2))

    source = start(tmp_path)
    try:
        assert opened(source) == {
            "agent.log-20261202-1796240763": a_end,  # resumed where it was committed (saved inode)
            "agent.log-20261202-1796240800": 0,  # never seen: from its head
            "agent.log": 0,
        }
    finally:
        close(source)


def test_at_start_generations_in_olddir_and_extension_names_are_found(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "old").mkdir(parents=True)
    (logs / "agent.log").write_bytes(lines("a", 10))
    saved_state(tmp_path, logs / "agent.log")
    with open(logs / "agent.log", "ab") as f:
        f.write(lines("a-more", 3))
    (logs / "agent.log").rename(logs / "old" / "agent.log.1")
    (logs / "agent.log").write_bytes(lines("b", 7))
    (logs / "agent.log").rename(logs / "agent-20261202.log.b")  # not a sibling name
    (logs / "agent-20261202.log.b").rename(logs / "old" / "agent-20261202.log")  # logrotate `extension .log`
    (logs / "agent.log").write_bytes(lines("c", 2))

    source = start(tmp_path, olddir=["old"], rotated_names=["{stem}-*{suffix}"])
    try:
        assert sorted(opened(source)) == ["agent.log", "old/agent-20261202.log", "old/agent.log.1"]
    finally:
        close(source)


def test_at_start_a_compressed_generation_never_read_is_reported_not_skipped_silently(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(lines("a", 10))
    saved_state(tmp_path, logs / "agent.log")
    # a was read to its end, then rotated and compressed: nothing to report.
    with gzip.open(logs / "agent.log.2.gz", "wb") as gz:
        gz.write((logs / "agent.log").read_bytes())
    (logs / "agent.log").unlink()
    # b was created, rotated and compressed while stopped: its lines are lost, and said so.
    with gzip.open(logs / "agent.log.1.gz", "wb") as gz:
        gz.write(lines("b", 7))
    (logs / "agent.log").write_bytes(lines("c", 2))

    source = start(tmp_path)
    try:
        assert sorted(opened(source)) == ["agent.log"]
        assert source.unreadable == {str(logs / "agent.log.1.gz")}
    finally:
        close(source)


def test_at_start_copytruncate_copies_made_while_stopped_are_read_from_the_saved_offset(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(lines("a", 10))
    saved_state(tmp_path, logs / "agent.log")
    a_end = (logs / "agent.log").stat().st_size
    # While stopped, twice: more lines, copy, truncate (the writer keeps its descriptor).
    for copy, tag in (("agent.log-20261202-1", "a-more"), ("agent.log-20261202-2", "b")):
        with open(logs / "agent.log", "ab") as f:
            f.write(lines(tag, 4))
        (logs / copy).write_bytes((logs / "agent.log").read_bytes())
        os.truncate(logs / "agent.log", 0)
    (logs / "agent.log").write_bytes(lines("c", 2))

    source = start(tmp_path)
    try:
        assert opened(source) == {
            "agent.log-20261202-1": a_end,  # the copy of what was committed up to a_end, and more
            "agent.log-20261202-2": 0,  # a generation that began after the first truncate
            "agent.log": 0,  # truncated since its saved position: from its head
        }
    finally:
        close(source)


def test_at_start_a_copy_of_a_file_that_was_not_truncated_is_not_read(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(lines("a", 10))
    saved_state(tmp_path, logs / "agent.log")
    (logs / "agent.log.bak").write_bytes((logs / "agent.log").read_bytes())  # cp, no truncate

    source = start(tmp_path)
    try:
        assert sorted(opened(source)) == ["agent.log"]
    finally:
        close(source)


def test_a_copy_renamed_while_it_is_looked_at_is_not_read_as_another_file_and_keeps_its_offset(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    """logrotate may shift agent.log.1 to agent.log.2 (and put a new file at .1) between the listing and the
    open: the path then names another file, which must not be followed under the listed one's key (it was,
    from its head: every line twice), and the copy's offset must be there for the next look."""
    logs = tmp_path / "logs"
    logs.mkdir()
    old = b"".join(b'{"n":%d,"pad":"%s"}\n' % (n, b"x" * 80) for n in range(40))
    (logs / "agent.log").write_bytes(old)
    clock = FakeClock(time.time())
    source = tail_source(tmp_path, clock)
    try:
        source._discover()
        (followed,) = source.files.values()
        followed.offset = len(old)  # read to its end
        # copytruncate: the copy, then the truncate and new lines.
        (logs / "agent.log.1").write_bytes(old)
        copy_key = file_key(os.stat(logs / "agent.log.1"))
        (logs / "agent.log").write_bytes(b'{"n":100}\n')

        def shifted_meanwhile(path: str, lengths: set[int]) -> dict[int, str]:
            if path.endswith("agent.log.1") and not (logs / "agent.log.2").exists():
                os.rename(logs / "agent.log.1", logs / "agent.log.2")
                (logs / "agent.log.1").write_bytes(b'{"n":200,"other":"file"}\n' * 30)
            return head_fingerprints(path, lengths)

        monkeypatch.setattr("pipeline.sources.tail.source.head_fingerprints", shifted_meanwhile)
        clock.advance(1)
        source._discover()
        for tf in source.files.values():
            assert file_key(os.fstat(tf.fd)) == tf.key, f"{tf.path} followed under another file's key"
        assert copy_key not in source.files

        clock.advance(1)
        source._discover()  # the next look: the copy at its new name, read past what the original gave
        copy = source.files[copy_key]
        assert Path(copy.path).name == "agent.log.2" and copy.offset == len(old)
    finally:
        for tf in source.files.values():
            tf.close()
