"""The documented cut-over: stop td-agent, `logferry import --positions`, start logferry.

A log half read according to td-agent's pos_file: after the import and a start interrupted
once by kill -9, the file output holds exactly the lines after td-agent's position, once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import generator
from pipeline.cli import main
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, Ledger, wait_for

pytestmark = pytest.mark.integration


def ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def td_agent_conf(layout: Layout, pos_file: Path) -> Path:
    """td-agent's config for this layout: tail JSON lines, write them to files (flushed every 0.5 s)."""
    conf = layout.root / "td-agent.conf"
    conf.write_text(f"""<source>
  @type tail
  path {layout.logs}/*.log
  pos_file {pos_file}
  tag ai.interactions
  <parse>
    @type json
  </parse>
</source>
<match ai.**>
  @type file
  path {layout.out}/interactions
  <format>
    @type json
  </format>
  <buffer time>
    timekey 1d
    flush_mode interval
    flush_interval 0.5s
    retry_wait 0.1s
  </buffer>
</match>
""")
    return conf


def test_cut_over_ships_every_line_after_td_agents_position_once(layout: Layout, daemon_factory: list[Daemon]) -> None:
    log = layout.logs / "agent.log"
    generator.write(str(log), 2000, max_chars=2000)
    halfway = sum(len(line) for line in log.read_bytes().splitlines(keepends=True)[:1000])
    pos_file = layout.root / "td-agent-agent.pos"  # td-agent stopped there
    pos_file.write_text(f"{log}\t{halfway:016x}\t{os.stat(log).st_ino:016x}\n")

    status = main(["import", str(td_agent_conf(layout, pos_file)), "-o", str(layout.config),
                   "--state-dir", str(layout.state), "--positions"])
    assert status == 0
    env = {"LOGFERRY_HEALTH__LISTEN": "127.0.0.1:0"}
    daemon = new_daemon(layout, daemon_factory, env=env).start()
    wait_for(lambda: layout.records(), timeout=30, what="the first records after the import")
    daemon.kill()
    generator.write(str(log), 500, start=2000, max_chars=2000)  # the agent goes on writing meanwhile
    with new_daemon(layout, daemon_factory, env=env):
        wait_for(lambda: len(layout.records()) >= 1500, timeout=60, what="every line after td-agent's position")
    Ledger.compare(ids(1500, start=1000), layout.records()).assert_exact()
