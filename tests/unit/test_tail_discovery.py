"""TailSource discovery: a file rotated away before logferry looked is found, even after the wall clock stepped back."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.clock import FakeClock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.base import SourceContext
from pipeline.sources.tail.checkpoint import PositionStore
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.sources.tail.source import TailSource


def tail_source(tmp_path: Path, clock: FakeClock) -> TailSource:
    config = TailSourceConfig(type="tail", paths=[str(tmp_path / "logs" / "agent.log")], tag="ai")
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
