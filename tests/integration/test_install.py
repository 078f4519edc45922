"""scripts/install and scripts/uninstall, into a staging root: idempotent, config never overwritten."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.daemon import REPO

pytestmark = pytest.mark.integration


def script(name: str, root, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "scripts" / name), *args], env={**os.environ, "ROOT": str(root)},
                          capture_output=True, text=True, timeout=300, check=True)


def test_install_is_idempotent_keeps_operator_config_and_uninstalls(tmp_path):
    root = tmp_path / "root"
    script("install", root)
    config = root / "etc/logferry/logferry.toml"
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "debug"'))
    script("install", root)  # again: an upgrade must not touch the operator's edit
    assert 'log_level = "debug"' in config.read_text()
    for path in ("etc/systemd/system/logferry.service", "etc/logrotate.d/ai-agent",
                 "etc/systemd/system/logferry.service.d/override.conf", "usr/share/doc/logferry/README.md",
                 "usr/share/doc/logferry/SECURITY.md"):
        assert (root / path).is_file(), path
    logferry = root / "usr/local/bin/logferry"
    assert subprocess.run([str(logferry), "version"], capture_output=True, text=True, check=True).stdout.startswith(
        "logferry ")
    checked = subprocess.run([str(logferry), "check", "-c", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr

    script("uninstall", root)
    assert not logferry.exists() and not (root / "opt/logferry").exists()
    assert not (root / "etc/systemd/system/logferry.service").exists()
    assert not (root / "etc/logrotate.d/ai-agent").exists()  # ours: it goes with the service
    assert config.exists()  # configuration stays without --purge
    script("uninstall", root, "--purge")
    assert not (root / "etc/logferry").exists()


def test_uninstall_keeps_a_logrotate_file_that_was_there_before(tmp_path):
    root = tmp_path / "root"
    theirs = root / "etc/logrotate.d/ai-agent"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("# the agent's own package\n/var/log/ai-agent/*.log { weekly }\n")
    script("install", root)  # keeps it: an existing file wins
    script("uninstall", root)
    assert theirs.read_text().startswith("# the agent's own package")
