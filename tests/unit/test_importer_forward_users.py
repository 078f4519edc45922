"""``logferry import`` of in_forward's ``<security> user_auth true`` and ``<user>``: never copied.

Like the shared key, the users' passwords go to the service's environment, and ``user_auth``
with them (the generated file passes `logferry check` without them); the report says what to set.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import settings_from_dict
from pipeline.sources.forward.config import ForwardSourceConfig

CONF = """<source>
  @type forward
  @id edge
  bind 127.0.0.1
  <security>
    self_hostname agg-1
    shared_key hunter2-fleet
    user_auth true
    <user>
      username relay
      password relay-s3cret
    </user>
    <user>
      username "Web.Tier"
      password "#{ENV['WEB_PASSWORD']}"
    </user>
  </security>
</source>
<match **>
  @type file
  path /o/a
</match>
"""


@pytest.fixture(autouse=True)
def no_logferry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LOGFERRY_"):
            monkeypatch.delenv(name)


def run_import(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str) -> tuple[int, str, str]:
    conf = tmp_path / "fwd.conf"
    conf.write_text(text)
    status = main(["import", str(conf)])
    out, err = capsys.readouterr()
    return status, out, err.replace(str(tmp_path) + "/", "")


def test_users_and_user_auth_go_to_the_environment_with_the_shared_key_and_are_never_copied(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status, toml_text, report = run_import(capsys, tmp_path, CONF)
    assert status == 0  # nothing refused: everything is translated or has its place to go
    source = tomllib.loads(toml_text)["sources"]["edge"]
    assert "user_auth" not in source and "users" not in source
    assert "s3cret" not in toml_text + report and "hunter2" not in toml_text + report
    assert ("fwd.conf:8  user_auth true: set LOGFERRY_SOURCES__EDGE__USER_AUTH=true in the service's environment"
            in report)
    assert ("fwd.conf:11  <user> relay password (not copied): set LOGFERRY_SOURCES__EDGE__USERS__RELAY__PASSWORD "
            "to its password\n") in report
    # a name the environment cannot spell (upper case, a dot): a password file and a table by hand
    assert ('<user> Web.Tier password (not copied): the environment cannot name this user: write its password '
            '(td-agent read it from $WEB_PASSWORD) to /etc/logferry/edge-user-Web.Tier-password (readable by the '
            'logferry user only) and add [sources.edge.users."Web.Tier"] with password_file = '
            '"/etc/logferry/edge-user-Web.Tier-password"') in report
    # the generated file passes check as written, and with what the report says to set, user_auth is on
    settings_from_dict(tomllib.loads(toml_text))
    for variable, value in {"SHARED_KEY": "hunter2-fleet", "USER_AUTH": "true",
                            "USERS__RELAY__PASSWORD": "relay-s3cret"}.items():
        monkeypatch.setenv(f"LOGFERRY_SOURCES__EDGE__{variable}", value)
    configured = settings_from_dict(tomllib.loads(toml_text)).sources["edge"]
    assert isinstance(configured, ForwardSourceConfig)
    assert configured.passwords("edge") == {"relay": "relay-s3cret"} and configured.key() == "hunter2-fleet"


def test_users_without_user_auth_and_user_auth_without_users_are_reported(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, report = run_import(capsys, tmp_path, CONF.replace("user_auth true", "user_auth false"))
    assert status == 0 and "fwd.conf:9-12  <user>: Fluentd ignored <user> without user_auth true; left out" in report
    assert "USER_AUTH" not in report and "PASSWORD" not in report
    no_users = CONF.split("    <user>")[0] + "  </security>\n</source>\n" + CONF.split("</source>\n")[1]
    status, _, report = run_import(capsys, tmp_path, no_users)
    assert status == 2 and "user_auth true without <user>: Fluentd refused every client" in report
