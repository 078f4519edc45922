"""The real daemon against a secured Elasticsearch: TLS on HTTP, basic auth, an API key, wrong credentials.

One throw-away node for the module (``es_secure``): ``xpack.security`` on, HTTPS with a certificate
signed by a CA made for it, a file-realm superuser. Every run ships generated records and checks that
each was indexed exactly once, and that no secret shows up where people look: the daemon's log,
``logferry check``, the status endpoint and ``logferry status``.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, render_toml, wait_for
from tests.support.elasticsearch import Cluster, SecuredElasticsearchServer, dropping_indices

pytestmark = pytest.mark.integration

COUNT = 300
PASSWORD_VARIABLE = "LOGFERRY_OUTPUTS__SEARCH__PASSWORD"


@pytest.fixture
def cluster(es_secure: SecuredElasticsearchServer) -> Iterator[Callable[[str], Cluster]]:
    """The secured cluster (as its superuser), with the index prefixes a test names dropped before and after it."""
    with dropping_indices(es_secure.url) as use:
        yield use


def write_config(layout: Layout, es: SecuredElasticsearchServer, prefix: str, auth: dict[str, Any]) -> None:
    """tail → elasticsearch at ``es`` with ``auth`` (credentials and TLS options), quick flushes and retries.

    ``retry_limit`` is high: a chunk refused for its credentials must wait in the buffer, not be set aside.
    """
    doc: dict[str, Any] = {
        "state_dir": layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.5}},
        "outputs": {"search": {
            "type": "elasticsearch", "hosts": [es.url], "index": f"{prefix}-%Y.%m.%d", "request_timeout": 10.0,
            **auth,
            "buffer": {"flush_interval": 0.2, "retry_wait": 0.1, "retry_max_interval": 1.0, "retry_limit": 1000},
        }},
    }
    layout.config.write_text(render_toml(doc))


def secret_file(layout: Layout, name: str, value: str) -> str:
    """A 0600 file holding ``value`` and a newline (as ``echo`` writes it), for a ``*_file`` option."""
    path = layout.root / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def basic_auth(layout: Layout, es: SecuredElasticsearchServer, password: str | None = None) -> dict[str, Any]:
    """The superuser with its password in a file (or ``password``), the node's certificate checked against its CA."""
    return {"username": es.username, "password_file": secret_file(layout, "es-password", password or es.password),
            "ca_file": str(es.ca_file)}


def request_ids(count: int) -> list[str]:
    return [generator.request_id(1, n) for n in range(count)]


def wait_count(es: Cluster, pattern: str, count: int, daemon: Daemon, timeout: float = 30.0) -> None:
    wait_for(lambda: es.count(pattern) >= count, timeout=timeout, interval=0.25,
             what=f"{count} documents in {pattern}; daemon log:\n{daemon.log()[-3000:]}")


def ship(layout: Layout, daemon_factory: list[Daemon], es: Cluster, prefix: str,
         env: dict[str, str] | None = None) -> Daemon:
    """Write COUNT records, run the daemon until they are all indexed, stop it; each must be there once."""
    generator.write(str(layout.logs / "agent.log"), COUNT, max_chars=500)
    with new_daemon(layout, daemon_factory, env) as daemon:
        wait_count(es, f"{prefix}-*", COUNT, daemon)
        assert daemon.stop() == 0
    es.assert_exactly(f"{prefix}-*", request_ids(COUNT))
    return daemon


def secrets_of(es: SecuredElasticsearchServer, *passwords: str) -> list[str]:
    """The password (and other ``passwords``), the Authorization header values made from them, the API key and
    its secret half."""
    found = []
    for password in (es.password, *passwords):
        found += [password, base64.b64encode(f"{es.username}:{password}".encode()).decode()]
    if es.api_key:
        found += [es.api_key, base64.b64decode(es.api_key).decode().partition(":")[2]]
    return found


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, "a secret was written out"


def test_basic_auth_with_a_password_file_over_verified_tls(layout, daemon_factory, es_secure, cluster):
    es = cluster("sec-basic")
    write_config(layout, es_secure, "sec-basic", basic_auth(layout, es_secure))
    daemon = ship(layout, daemon_factory, es, "sec-basic")
    log = daemon.log()
    assert f"output search: Elasticsearch {es_secure.version} at {es_secure.url}, cluster" in log
    assert "index template sec-basic installed" in log
    assert "delivery failed" not in log and "not verified" not in log
    assert_no_secret(log, secrets_of(es_secure))


def test_password_from_the_environment(layout, daemon_factory, es_secure, cluster):
    es = cluster("sec-env")
    write_config(layout, es_secure, "sec-env", {"username": es_secure.username, "ca_file": str(es_secure.ca_file)})
    env = {PASSWORD_VARIABLE: es_secure.password}
    check = subprocess.run([sys.executable, "-m", "pipeline", "check", "-c", str(layout.config)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False)
    assert check.returncode == 0, check.stderr
    assert_no_secret(check.stdout + check.stderr, secrets_of(es_secure))
    daemon = ship(layout, daemon_factory, es, "sec-env", env)
    assert "delivery failed" not in daemon.log()
    assert_no_secret(daemon.log() + layout.config.read_text(), secrets_of(es_secure))


def test_api_key(layout, daemon_factory, es_secure, cluster):
    if es_secure.api_key is None:
        pytest.skip(f"this Elasticsearch cannot make API keys: {es_secure.api_key_problem}")
    es = cluster("sec-apikey")
    key_file = secret_file(layout, "es-api-key", es_secure.api_key)
    write_config(layout, es_secure, "sec-apikey", {"api_key_file": key_file, "ca_file": str(es_secure.ca_file)})
    daemon = ship(layout, daemon_factory, es, "sec-apikey")
    assert "delivery failed" not in daemon.log()
    assert_no_secret(daemon.log(), secrets_of(es_secure))


def test_certificates_are_verified_unless_verify_certs_is_false(layout, daemon_factory, es_secure, cluster):
    # No ca_file: the node's certificate is signed by a CA nobody trusts, so by default nothing is sent ...
    es = cluster("sec-noverify")
    auth = basic_auth(layout, es_secure)
    del auth["ca_file"]
    write_config(layout, es_secure, "sec-noverify", auth)
    generator.write(str(layout.logs / "agent.log"), COUNT, max_chars=500)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: "delivery failed output=search" in daemon.log(), timeout=30, what="a failed delivery")
        assert re.search(r"output search: cannot check Elasticsearch at \S+: .*CERTIFICATE_VERIFY_FAILED", daemon.log())
        assert daemon.stop() == 0
    assert es.count("sec-noverify-*") == 0
    assert layout.buffered_chunks("search"), "the records wait in the buffer"
    # ... and with verify_certs = false the same buffered records go, once each, with a warning.
    write_config(layout, es_secure, "sec-noverify", {**auth, "verify_certs": False})
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(es, "sec-noverify-*", COUNT, daemon)
        assert daemon.stop() == 0
    es.assert_exactly("sec-noverify-*", request_ids(COUNT))
    assert "output search: TLS certificates are not verified (verify_certs = false)" in daemon.log()
    assert_no_secret(daemon.log(), secrets_of(es_secure))


@pytest.mark.parametrize("install_template", [True, False])
def test_a_wrong_password_is_reported_and_the_records_wait_for_the_right_one(
    layout, daemon_factory, es_secure, cluster, install_template
):
    # With a template to install (the default) the first request refused is the template's; without, the bulk's.
    es = cluster("sec-wrong")
    wrong = "wrong-" + es_secure.password[::-1]
    auth = basic_auth(layout, es_secure, password=wrong)
    write_config(layout, es_secure, "sec-wrong", {**auth, "install_template": install_template})
    generator.write(str(layout.logs / "agent.log"), COUNT, max_chars=500)
    secrets = secrets_of(es_secure, wrong)
    refused = rf"HTTP 401 security_exception: unable to authenticate user \[{es_secure.username}\]"
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: "delivery failed output=search" in daemon.log(), timeout=30, what="a failed delivery")
        log = daemon.log()
        assert re.search(rf"output search: cannot check Elasticsearch at {re.escape(es_secure.url)}: {refused}", log)
        assert re.search(rf"delivery failed output=search .*{refused}", log)
        if not install_template:
            assert re.search(rf"output search: authentication failed at {re.escape(es_secure.url)} \({refused} "
                             r"for REST request \[/_bulk\?[^]]*\]\): check the credentials; delivery will retry", log)
        _, body = layout.http("/status")
        search = orjson.loads(body)["outputs"]["search"]
        assert search["failing"] and re.search(refused, search["last_error"])
        status = subprocess.run([sys.executable, "-m", "pipeline", "status", "-c", str(layout.config)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert "output search: FAILING" in status.stdout and re.search(refused, status.stdout), status.stdout
        assert_no_secret(log + body.decode() + status.stdout + status.stderr, secrets)
        assert daemon.stop() == 0
    assert es.count("sec-wrong-*") == 0
    assert layout.buffered_chunks("search"), "the records wait in the buffer"
    assert not list((layout.state / "buffer" / "search").glob("dead/*")), "nothing set aside"
    # The password file is read at start: fixed, and the daemon restarted, the same records go, once each.
    secret_file(layout, "es-password", es_secure.password)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_count(es, "sec-wrong-*", COUNT, daemon)
        assert daemon.stop() == 0
    es.assert_exactly("sec-wrong-*", request_ids(COUNT))
    assert_no_secret(daemon.log(), secrets)
