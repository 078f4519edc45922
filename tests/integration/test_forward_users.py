"""User authentication of the forward source against Node.js fluent-logger 3.4.1 (npm), a real client.

Node's fluent-logger gives ``security: {clientHostname, sharedKey, username, password}`` in the
handshake as Fluentd's out_forward does (it answers the HELO's binary ``auth`` salt with the user
and ``sha512_hex(salt + username + password)``). The right user's records are stored exactly
once; a wrong password, an unknown user and a client giving no user are refused with a log line
naming the peer and the user, and store nothing.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, wait_for
from tests.support.elasticsearch import free_port
from tests.support.forward import forward_config, node_sender, wait_listening

pytestmark = pytest.mark.integration

RECORDS = 300
PASSWORD = "web-pa55word"  # in a password file
ENV_PASSWORD = "batch-from-env"  # given to the daemon by LOGFERRY_SOURCES__FLUENT__USERS__BATCH__PASSWORD


def secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def send(layout: Layout, port: int, sender: str, count: int, user: str | None,
         password: str) -> subprocess.Popen[bytes]:
    node, script, env = node_sender()
    if user is not None:
        env = {**env, "FLUENT_USERNAME": user, "FLUENT_PASSWORD": password}
    with (layout.root / f"node-{sender}.log").open("wb") as out:
        return subprocess.Popen([node, str(script), "127.0.0.1", str(port), sender, str(count), "fleet-key"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def refused(layout: Layout, port: int, daemon: Daemon, sender: str, user: str | None, password: str,
            why: str) -> None:
    """Run a sender that must be refused: wait for the daemon's log line, then stop the sender (it retries)."""
    process = send(layout, port, sender, 5, user, password)
    try:
        wait_for(lambda: why in daemon.log(), timeout=30, what=f"the refusal of {sender}")
    finally:
        process.kill()
        process.wait(10)
    line = next(line for line in daemon.log().splitlines() if why in line)
    assert "handshake from 127.0.0.1:" in line and "refused" in line, line


def test_node_fluent_logger_with_the_right_user_is_stored_once_and_wrong_ones_are_refused(
        layout: Layout, daemon_factory: list[Daemon]) -> None:
    port = free_port()
    key = secret(layout.root / "fleet-key", "fleet-key")
    web = secret(layout.root / "web-password", PASSWORD)
    forward_config(layout, port, source={
        "shared_key_file": str(key), "user_auth": True, "self_hostname": "aggregator",
        "users": {"web": {"password_file": str(web)}}})
    env = {"LOGFERRY_SOURCES__FLUENT__USERS__BATCH__PASSWORD": ENV_PASSWORD}
    with new_daemon(layout, daemon_factory, env) as daemon:
        wait_listening(daemon)
        refused(layout, port, daemon, "bad", "web", "guess", "wrong password for user 'web' (client 'node-bad')")
        refused(layout, port, daemon, "who", "mallory", PASSWORD, "unknown user 'mallory' (client 'node-who')")
        refused(layout, port, daemon, "anon", None, "",
                "no user name in the PING (user_auth = true) (client 'node-anon')")
        good = [send(layout, port, "web", RECORDS, "web", PASSWORD),
                send(layout, port, "batch", RECORDS, "batch", ENV_PASSWORD)]
        for process in good:
            assert process.wait(timeout=180) == 0, (layout.root / "node-web.log").read_text(errors="replace")
        # every emit was acknowledged, so committed: the file output flushes within a few polls
        wait_for(lambda: len(layout.records()) >= 2 * RECORDS, timeout=60, what="every record in the file output")
        network = orjson.loads(layout.http("/status")[1])["sources"]["fluent"]["network"]
        assert network["refused_handshakes"] >= 3 and network["records"] == 2 * RECORDS
        assert daemon.stop() == 0
    stored = Counter(str(r["request_id"]) for r in layout.records())
    want = {f"node-{s}-{i}" for s in ("web", "batch") for i in range(RECORDS)}
    assert set(stored) == want and max(stored.values()) == 1, stored.most_common(3)
    for sender in ("web", "batch"):  # no emit failed, so none was emitted twice
        assert "reemit" not in (layout.root / f"node-{sender}.log").read_text(errors="replace")
    log = daemon.log()
    assert PASSWORD not in log and ENV_PASSWORD not in log and "guess" not in log
