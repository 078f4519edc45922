"""The command line as an operator uses it: check, version, replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import REPO, Ledger, wait_for

pytestmark = pytest.mark.integration


def logferry(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_check_names_a_typo_by_its_key_path(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(
        '[sources.agent]\ntype = "tail"\npaths = ["/x/*.log"]\ntag = "t"\n'
        '[outputs.archive]\ntype = "file"\npath = "/tmp/x"\n[outputs.archive.buffer]\ntimekeyy = 60\n'
    )
    result = logferry("check", "-c", str(config))
    assert result.returncode == 2
    assert "outputs.archive.buffer.timekeyy: unknown key" in result.stderr


def test_check_names_a_wrong_type_and_a_bad_drop_in(tmp_path):
    config = tmp_path / "main.toml"
    config.write_text('[sources.agent]\ntype = "tail"\npaths = ["/x/*.log"]\ntag = "t"\n'
                      '[outputs.debug]\ntype = "file"\npath = "/tmp/x"\n')
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "50-limits.toml").write_text('[outputs.debug.buffer]\ntotal_limit_bytes = "lots"\n')
    result = logferry("check", "-c", str(config))
    assert result.returncode == 2
    assert "outputs.debug.buffer.total_limit_bytes:" in result.stderr
    assert "50-limits.toml" in result.stderr


def test_check_prints_the_merged_config_of_the_example(tmp_path):
    config = tmp_path / "logferry.toml"
    config.write_text((REPO / "config.example.toml").read_text())
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-host.toml").write_text('[enrich]\nhostname = "agent-7"\n')
    result = logferry("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    merged = orjson.loads(result.stdout)
    assert merged["enrich"]["hostname"] == "agent-7"
    assert merged["sources"]["agent"]["paths"] == ["/var/log/ai-agent/*.log"]
    assert merged["outputs"]["archive"]["buffer"]["timekey"] == 3600
    assert merged["outputs"]["archive"]["path"] == "interactions/%Y/%m/%d/"


def test_failing_output_sets_chunks_aside_and_replay_delivers_them_once(layout, daemon_factory):
    blocker = layout.out / "blocked"
    blocker.write_text("a file where the output wants a directory")
    layout.write_config(output={"path": str(blocker / "%Y%m%d-%H.jsonl")}, buffer={"retry_limit": 2})
    generator.write(str(layout.logs / "agent.log"), 200, max_chars=300)
    dead = layout.state / "buffer" / "debug" / "dead"
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: list(dead.glob("*.error.json")), what="a chunk set aside")
        assert daemon.stop() == 0
    error = orjson.loads(next(dead.glob("*.error.json")).read_bytes())
    assert error["attempts"] == 2 and f"cannot write {blocker}" in error["error"]
    blocker.unlink()
    result = logferry("replay", "-c", str(layout.config), "debug")
    assert result.returncode == 0 and "queued again" in result.stdout
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: len(layout.records()) >= 200, what="replayed records")
        daemon.stop()
    Ledger.compare([generator.request_id(1, n) for n in range(200)], layout.records()).assert_exact()
