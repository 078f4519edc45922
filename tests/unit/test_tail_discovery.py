"""TailSource discovery: a file rotated away before logferry looked is found, even after the wall clock stepped back."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.clock import FakeClock
from pipeline.config import TailSourceConfig
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.tail.checkpoint import PositionStore
from pipeline.sources.tail.source import TailSource


def tail_source(tmp_path: Path, clock: FakeClock) -> TailSource:
    config = TailSourceConfig(type="tail", paths=[str(tmp_path / "logs" / "agent.log")], tag="ai")
    positions = PositionStore(tmp_path / "positions.json")
    positions.load()
    return TailSource("agent", config, positions, DeadLetterStore(tmp_path / "dead"), clock, first_start=True)


def test_a_file_rotated_away_unseen_after_the_clock_stepped_back_is_still_read(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "agent.log").write_bytes(b'{"n":1}\n')
    clock = FakeClock(time.time() + 3600)  # the host clock runs an hour fast...
    source = tail_source(tmp_path, clock)
    try:
        source._discover(at_start=True)
        clock.advance(5)
        clock.set_wall(time.time())  # ...until NTP steps it back to the real time

        # Written and rotated away between two looks: its ctime is before the previous look's wall time.
        (logs / "agent.log.1").write_bytes(b'{"n":2}\n')
        clock.advance(5)
        source._discover(at_start=False)

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
        source._discover(at_start=True)
        clock.advance(60)
        source._discover(at_start=False)

        assert [Path(tf.path).name for tf in source.files.values()] == ["agent.log"]
    finally:
        for tf in source.files.values():
            tf.close()
