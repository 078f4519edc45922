"""Debian's real logrotate, run once on the test layout's agent.log."""

from __future__ import annotations

import shutil
import subprocess

from tests.support.daemon import Layout

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


def logrotate(layout: Layout, options: str) -> None:
    """Rotate ``layout.logs/agent.log`` now (``-f``) with ``options``; a failure says what logrotate said."""
    conf = layout.root / "logrotate.conf"
    conf.write_text(f"{layout.logs}/agent.log {{\n  rotate 20\n  missingok\n  {options}\n}}\n")
    done = subprocess.run([LOGROTATE, "-f", "-s", str(layout.root / "logrotate.state"), str(conf)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"logrotate exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}"
