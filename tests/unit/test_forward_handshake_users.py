"""The forward source's user authentication (in_forward's ``<security> user_auth`` and ``<user>``).

The handshake itself (salted digests, what a refused client is told and what the log says) and
its configuration (``user_auth``, ``[sources.NAME.users.USERNAME]``, passwords from a file or
the environment, errors naming their key, passwords never shown).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgpack
import orjson
import pytest

from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.sources.forward.config import ForwardSourceConfig
from pipeline.sources.forward.handshake import Handshake, client_ping

USERS = {"web": "pa55word", "batch": "other"}


@pytest.fixture(autouse=True)
def no_logferry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LOGFERRY_"):
            monkeypatch.delenv(name)


def shake(users: dict[str, str] | None = USERS) -> tuple[Handshake, list[object]]:
    server = Handshake.start("fleet", "aggregator", users)
    return server, msgpack.unpackb(server.helo())


def answer(server: Handshake, ping: bytes) -> tuple[bool, str, list[object]]:
    ok, reason, pong = server.check_ping(msgpack.unpackb(ping))
    return ok, reason, msgpack.unpackb(pong)


def test_the_helo_carries_a_fresh_binary_salt_and_the_right_user_is_accepted() -> None:
    server, helo = shake()
    salt = helo[1]["auth"]  # type: ignore[index]
    # bin, not str: Node's fluent-logger sends its user only for a Buffer salt, as Fluentd sends it
    assert isinstance(salt, bytes) and len(salt) == 16 and salt != shake()[1][1]["auth"]  # type: ignore[index]
    ok, reason, pong = answer(server, client_ping(helo, "web-1", "fleet", "web", "pa55word"))
    assert ok and reason == "" and pong[:4] == ["PONG", True, "", "aggregator"]


def test_the_password_digest_is_sha512_of_salt_user_and_password_as_in_fluentd() -> None:
    server, helo = shake()
    salt = helo[1]["auth"]  # type: ignore[index]
    key_ping = msgpack.unpackb(client_ping(helo, "web-1", "fleet"))[:4]  # the shared-key part, right
    digest = hashlib.sha512(salt + b"batch" + b"other").hexdigest()
    ok, _, _ = server.check_ping([*key_ping, "batch", digest])
    assert ok
    ok, _, _ = server.check_ping([*key_ping, b"batch", digest.encode()])  # as bin: accepted the same
    assert ok


def test_a_wrong_password_is_refused_naming_the_user_and_client_but_no_secret() -> None:
    server, helo = shake()
    ok, reason, pong = answer(server, client_ping(helo, "web-1", "fleet", "web", "guess"))
    assert not ok and reason == "wrong password for user 'web' (client 'web-1')"
    # the client is told what in_forward tells it, not which half was wrong
    assert pong[:3] == ["PONG", False, "username/password mismatch"] and pong[4] == ""
    assert "guess" not in reason and "pa55word" not in reason


def test_an_unknown_user_and_a_ping_without_user_are_refused() -> None:
    server, helo = shake()
    ok, reason, pong = answer(server, client_ping(helo, "web-1", "fleet", "mallory", "pa55word"))
    assert not ok and reason == "unknown user 'mallory' (client 'web-1')" and pong[1] is False
    ok, reason, _ = answer(server, client_ping(helo, "web-1", "fleet"))  # a client without a user: "", ""
    assert not ok and reason == "no user name in the PING (user_auth = true) (client 'web-1')"
    four = msgpack.unpackb(client_ping(helo, "web-1", "fleet"))[:4]  # an old client's 4-element PING
    assert server.check_ping(four)[:2] == (False, "no user name in the PING (user_auth = true) (client 'web-1')")
    ok, reason, _ = server.check_ping([*four, ["web"], "x"])
    assert not ok and reason.startswith("malformed PING")


def test_the_shared_key_is_checked_before_the_user() -> None:
    server, helo = shake()
    ok, reason, pong = answer(server, client_ping(helo, "web-1", "wrong-key", "web", "pa55word"))
    assert not ok and reason == "wrong shared_key from client 'web-1'" and pong[2] == "shared_key mismatch"


def test_without_user_auth_the_helo_has_no_salt_and_any_user_fields_are_ignored() -> None:
    server, helo = shake(None)
    assert helo[1]["auth"] == ""  # type: ignore[index]
    ok, _, pong = answer(server, client_ping(helo, "web-1", "fleet", "anyone", "anything"))
    assert ok and pong[1] is True


def test_hostile_names_and_digests_are_refused_without_an_error_and_shown_short() -> None:
    server, helo = shake()
    key_ping = msgpack.unpackb(client_ping(helo, "web-1", "fleet"))[:4]
    ok, reason, _ = server.check_ping([*key_ping, "web", "ü" * 128])  # non-ASCII: hmac would raise on str
    assert not ok and reason.startswith("wrong password for user 'web'")
    ok, reason, _ = server.check_ping([*key_ping, "x" * 100_000, "00"])
    assert not ok and len(reason) < 200 and "..." in reason
    bad_key = [key_ping[0], "h", key_ping[2], "é" * 128]
    assert server.check_ping(bad_key)[:2] == (False, "wrong shared_key from client 'h'")


# -- configuration ----------------------------------------------------------------------

def forward(**options: object) -> ForwardSourceConfig:
    return ForwardSourceConfig.model_validate({"type": "forward", **options})


def secret_file(path: Path, text: str, mode: int = 0o640) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def toml(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "logferry.toml"
    path.write_text(f'state_dir = "{tmp_path}/state"\n[sources.fluent]\ntype = "forward"\nshared_key = "k"\n'
                    f'{source}\n[outputs.debug]\ntype = "file"\npath = "{tmp_path}/out.jsonl"\n')
    return path


def test_users_come_from_files_and_inline_and_are_read_once_at_start(tmp_path: Path) -> None:
    web = secret_file(tmp_path / "web-password", "pa55word\n")
    config = forward(shared_key="k", user_auth=True,
                     users={"web": {"password_file": str(web)}, "batch": {"password": "other"}})
    assert config.passwords("fluent") == USERS
    assert forward(shared_key="k").passwords("fluent") is None
    web.unlink()  # gone after the load: the start fails naming the key
    with pytest.raises(ConfigError, match=r"^sources\.fluent\.users\.web\.password_file: cannot read"):
        config.passwords("fluent")


@pytest.mark.parametrize(("options", "message"), [
    ({"shared_key": "k", "user_auth": True}, "user_auth = true needs at least one user"),
    ({"user_auth": True, "users": {"web": {"password": "p"}}}, "user_auth = true needs shared_key or shared_key_file"),
    ({"shared_key": "k", "users": {"web": {"password": "p"}}}, "users are checked only with user_auth = true"),
    ({"shared_key": "k", "user_auth": True, "users": {"": {"password": "p"}}}, "a user name cannot be empty"),
    ({"shared_key": "k", "user_auth": True, "users": {"web": {}}}, "no password: set password_file"),
    ({"shared_key": "k", "user_auth": True, "users": {"web": {"password": ""}}}, "no password: set password_file"),
])
def test_incomplete_user_auth_is_a_config_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        forward(**options)


def test_a_bad_user_entry_names_its_key_at_load(tmp_path: Path) -> None:
    open_file = secret_file(tmp_path / "web-password", "pa55word", 0o644)
    path = toml(tmp_path, f'user_auth = true\n[sources.fluent.users.web]\npassword_file = "{open_file}"\n')
    with pytest.raises(ConfigError, match=r"sources\.fluent\.users\.web\.password_file: .*open to others"):
        load_settings(path)
    open_file.chmod(0o600)
    path = toml(tmp_path, f'user_auth = true\n[sources.fluent.users.web]\npassword = "x"\n'
                          f'password_file = "{open_file}"')
    with pytest.raises(ConfigError, match=r"sources\.fluent\.users\.web: .*not both"):
        load_settings(path)
    path = toml(tmp_path, "user_auth = true\n")
    with pytest.raises(ConfigError, match=r"sources\.fluent: .*user_auth = true needs at least one user"):
        load_settings(path)


def test_a_password_from_the_environment_completes_a_user_and_is_never_dumped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGFERRY_SOURCES__FLUENT__USERS__WEB__PASSWORD", "from-env-pw")
    monkeypatch.setenv("LOGFERRY_SOURCES__FLUENT__SHARED_KEY", "from-env-key")
    settings = load_settings(toml(tmp_path, "user_auth = true\n"))
    source = settings.sources["fluent"]
    assert isinstance(source, ForwardSourceConfig)
    assert source.passwords("fluent") == {"web": "from-env-pw"} and source.key() == "from-env-key"
    dumped = orjson.dumps(settings.model_dump(mode="json")).decode()  # what `logferry check` prints
    assert "from-env" not in dumped and '"user_auth":true' in dumped
