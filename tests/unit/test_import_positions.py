"""Cut-over: td-agent pos_files and Fluent Bit's tail database seed logferry's positions, checked per file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import orjson
import pytest

from pipeline.cli import main
from pipeline.sources.tail.heads import head_digest


def pos_line(path: Path, offset: int, inode: int) -> str:
    """One in_tail position line as Fluentd writes it: path, offset and inode as 16 hex digits."""
    return f"{path}\t{offset:016x}\t{inode:016x}\n"


def conf_for(tmp_path: Path, pos_file: Path) -> Path:
    conf = tmp_path / "td-agent.conf"
    conf.write_text(f"<source>\n  @type tail\n  path {tmp_path}/log/*.log\n  pos_file {pos_file}\n  tag ai.x\n"
                    f"  <parse>\n    @type json\n  </parse>\n</source>\n"
                    f"<match ai.**>\n  @type file\n  path {tmp_path}/out/ai\n</match>\n")
    return conf


def saved(state: Path) -> list[dict[str, object]]:
    files: list[dict[str, object]] = orjson.loads((state / "positions.json").read_bytes())["files"]
    return files


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    directory = tmp_path / "log"
    directory.mkdir()
    return directory


def test_each_watched_entry_is_seeded_at_its_offset_and_each_mismatch_reported(
        tmp_path: Path, logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    current, rotated, truncated = logs / "a.log", logs / "b.log", logs / "c.log"
    current.write_bytes(b'{"n":1}\n{"n":2}\n{"n":3}\n')
    rotated.write_bytes(b'{"n":1}\n')
    truncated.write_bytes(b'{"n":1}\n')
    pos = tmp_path / "agent.pos"
    pos.write_text(pos_line(current, 0xFFFFFFFFFFFFFFFF, 12)  # an earlier file at that path, no longer watched
                   + pos_line(current, 16, current.stat().st_ino)
                   + pos_line(rotated, 8, rotated.stat().st_ino + 1)  # rotated since td-agent saved it
                   + pos_line(truncated, 500, truncated.stat().st_ino))
    state = tmp_path / "state"
    status = main(["import", str(conf_for(tmp_path, pos)), "-o", str(tmp_path / "l.toml"),
                   "--state-dir", str(state), "--positions", str(pos)])
    report = capsys.readouterr().err
    assert status == 2
    st = current.stat()
    assert saved(state) == [{"source": "tail", "key": f"{st.st_dev}:{st.st_ino}", "path": str(current), "offset": 16,
                             "fingerprint": head_digest(current.read_bytes()), "fp_len": 24}]
    assert f"agent.pos:3  {rotated}: inode {rotated.stat().st_ino} is not the recorded" in report
    assert f"agent.pos:4  {truncated}: file is 8 bytes, shorter than the recorded offset 500" in report


def test_without_files_the_pos_files_the_config_names_are_read(tmp_path: Path, logs: Path) -> None:
    log = logs / "a.log"
    log.write_bytes(b'{"n":1}\n{"n":2}\n')
    pos = tmp_path / "agent.pos"
    pos.write_text(pos_line(log, 8, log.stat().st_ino))
    state = tmp_path / "state"
    assert main(["import", str(conf_for(tmp_path, pos)), "-o", str(tmp_path / "l.toml"), "--state-dir", str(state),
                 "--positions"]) == 0
    assert [f["offset"] for f in saved(state)] == [8]


def test_fluent_bit_tail_database_is_read_too(tmp_path: Path, logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = logs / "a.log"
    log.write_bytes(b'{"n":1}\n{"n":2}\n')
    db_path = tmp_path / "tail.db"
    with sqlite3.connect(db_path) as db:  # Fluent Bit's schema (plugins/in_tail/tail_sql.h)
        db.execute("CREATE TABLE in_tail_files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, offset INTEGER, "
                   "inode INTEGER, created INTEGER, rotated INTEGER DEFAULT 0)")
        db.execute("INSERT INTO in_tail_files (name, offset, inode, created, rotated) VALUES (?, ?, ?, ?, 0)",
                   (str(log), 8, log.stat().st_ino, 1_700_000_000))
        db.execute("INSERT INTO in_tail_files (name, offset, inode, created, rotated) VALUES (?, ?, ?, ?, 1)",
                   (str(log) + ".1", 99, 4242, 1_600_000_000))
    db.close()
    state = tmp_path / "state"
    assert main(["import", str(conf_for(tmp_path, tmp_path / "unused.pos")), "-o", str(tmp_path / "l.toml"),
                 "--state-dir", str(state), "--positions", str(db_path)]) == 2
    assert [(f["path"], f["offset"]) for f in saved(state)] == [(str(log), 8)]
    assert f"tail.db:id 2  {log}.1: Fluent Bit was still finishing this rotated file" in capsys.readouterr().err


def test_existing_positions_are_never_overwritten(
        tmp_path: Path, logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = logs / "a.log"
    log.write_bytes(b'{"n":1}\n')
    pos = tmp_path / "agent.pos"
    pos.write_text(pos_line(log, 8, log.stat().st_ino))
    state = tmp_path / "state"
    state.mkdir()
    (state / "positions.json").write_bytes(b"{}")
    before = os.stat(state / "positions.json").st_mtime_ns
    assert main(["import", str(conf_for(tmp_path, pos)), "-o", str(tmp_path / "l.toml"), "--state-dir", str(state),
                 "--positions", str(pos)]) == 2
    assert "logferry already has positions there" in capsys.readouterr().err
    assert os.stat(state / "positions.json").st_mtime_ns == before


def test_a_position_file_that_cannot_be_read_stops_the_import_before_anything_is_written(
        tmp_path: Path, logs: Path) -> None:
    out, state = tmp_path / "l.toml", tmp_path / "state"
    assert main(["import", str(conf_for(tmp_path, tmp_path / "agent.pos")), "-o", str(out), "--state-dir", str(state),
                 "--positions", str(tmp_path / "no-such.pos")]) == 2
    assert not out.exists() and not state.exists()


def test_seeded_positions_belong_to_the_state_directorys_owner_when_root_seeds_them(tmp_path: Path, logs: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: it is what `sudo logferry import` does")
    log = logs / "a.log"
    log.write_bytes(b'{"n":1}\n')
    pos = tmp_path / "agent.pos"
    pos.write_text(pos_line(log, 8, log.stat().st_ino))
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    os.chown(state, 4321, 4322)  # the daemon's user made it at an earlier start (systemd StateDirectory=)
    assert main(["import", str(conf_for(tmp_path, pos)), "-o", str(tmp_path / "l.toml"), "--state-dir", str(state),
                 "--positions", str(pos)]) == 0
    st = (state / "positions.json").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4321, 4322, 0o640)
