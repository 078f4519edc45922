"""Configuration: typos fail with the key path, environment wins over TOML, drop-ins merge in order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import pipeline
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError
from pipeline.outputs.file.config import FileOutputConfig

REPO = Path(pipeline.__file__).resolve().parents[1]

BASE = """
state_dir = "/var/lib/test-logferry"

[sources.agent]
type = "tail"
paths = ["/logs/*.jsonl"]
tag = "ai.chat"

[outputs.debug]
type = "file"
path = "/out/%Y%m%d.jsonl"

[outputs.debug.buffer]
timekey = 60
"""


@pytest.fixture(autouse=True)
def no_logferry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LOGFERRY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "logferry.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path, text))


def debug_output(settings: Settings) -> FileOutputConfig:
    output = settings.outputs["debug"]
    assert isinstance(output, FileOutputConfig)
    return output


def test_valid_config_loads(tmp_path: Path) -> None:
    settings = load(tmp_path, BASE)
    assert settings.state_dir == Path("/var/lib/test-logferry")
    assert settings.sources["agent"].tag == "ai.chat"
    output = debug_output(settings)
    assert output.path == "/out/%Y%m%d.jsonl" and output.buffer.timekey == 60
    assert output.buffer.flush_interval == 5.0, "defaults fill the rest"


def test_typo_key_names_its_dotted_path(tmp_path: Path) -> None:
    text = BASE.replace("timekey = 60", "timekeyy = 60")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert "outputs.debug.buffer.timekeyy: unknown key" in str(info.value)
    assert "file" not in str(info.value).split("\n", 1)[1], "the union's type tag is not part of the path"


def test_typo_at_the_top_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stat_dir: unknown key"):
        load(tmp_path, "stat_dir = '/x'\n" + BASE)


def test_wrong_type_names_its_path(tmp_path: Path) -> None:
    text = BASE.replace("timekey = 60", 'timekey = "an hour"')
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "outputs.debug.buffer.timekey:" in message and "integer" in message


def test_out_of_range_value_names_its_path(tmp_path: Path) -> None:
    text = BASE.replace('tag = "ai.chat"', 'tag = "ai.chat"\nread_bytes = 10')
    with pytest.raises(ConfigError, match=r"sources\.agent\.read_bytes: "):
        load(tmp_path, text)


def test_a_malformed_tag_pattern_names_its_key_and_what_is_wrong(tmp_path: Path) -> None:
    text = BASE.replace("[outputs.debug]", '[outputs.debug]\nmatch = ["ai.**", "{ai.*,ml"]')
    with pytest.raises(ConfigError, match=r"outputs\.debug\.match: .*tag pattern '\{ai\.\*,ml': a brace is not closed"):
        load(tmp_path, text)


def test_every_problem_is_listed(tmp_path: Path) -> None:
    text = BASE.replace("timekey = 60", "timekeyy = 60\nworkers = 0")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "outputs.debug.buffer.timekeyy: unknown key" in message
    assert "outputs.debug.buffer.workers:" in message


def test_missing_type(tmp_path: Path) -> None:
    text = BASE.replace('type = "file"\n', "")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert "outputs.debug.type: is missing" in str(info.value)


def test_unknown_type(tmp_path: Path) -> None:
    text = BASE.replace('type = "file"', 'type = "kafkaa"')
    with pytest.raises(ConfigError, match=r"outputs\.debug\.type: is 'kafkaa'"):
        load(tmp_path, text)


def test_bad_output_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="outputs"):
        load(
            tmp_path,
            BASE.replace("[outputs.debug]", '[outputs."de bug"]').replace(
                "[outputs.debug.buffer]", '[outputs."de bug".buffer]'
            ),
        )


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "\n[[[nope")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml")


def test_environment_wins_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGFERRY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOGFERRY_OUTPUTS__DEBUG__PATH", "/elsewhere/out.jsonl")

    settings = load(tmp_path, BASE)

    assert settings.state_dir == tmp_path / "state"
    output = debug_output(settings)
    assert output.path == "/elsewhere/out.jsonl"
    assert output.buffer.timekey == 60, "the rest of the TOML table is kept"
    assert settings.sources["agent"].tag == "ai.chat"


def test_bad_environment_value_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGFERRY_SHUTDOWN_TIMEOUT", "-1")
    with pytest.raises(ConfigError, match="shutdown_timeout"):
        load(tmp_path, BASE)


def test_drop_ins_merge_in_name_order_later_wins(tmp_path: Path) -> None:
    main = write(tmp_path, BASE)
    write(tmp_path, "[outputs.debug.buffer]\ntimekey = 120\nflush_interval = 9.0\n", "conf.d/20-buffer.toml")
    write(tmp_path, "[outputs.debug.buffer]\ntimekey = 300\n", "conf.d/30-later.toml")
    write(tmp_path, "[outputs.debug.buffer]\ntimekey = 7\nworkers = 3\n", "conf.d/10-first.toml")
    write(tmp_path, "this is not toml at all [", "conf.d/ignored.txt")

    settings = load_settings(main)

    buffer = debug_output(settings).buffer
    assert buffer.timekey == 300, "30-later.toml is read last"
    assert buffer.flush_interval == 9.0 and buffer.workers == 3, "tables merge key by key"
    assert debug_output(settings).path == "/out/%Y%m%d.jsonl"


def test_drop_in_can_add_an_output(tmp_path: Path) -> None:
    main = write(tmp_path, BASE)
    write(tmp_path, '[outputs.more]\ntype = "file"\npath = "/more.jsonl"\n', "conf.d/50-more.toml")
    assert sorted(load_settings(main).outputs) == ["debug", "more"]


def test_example_config_validates(tmp_path: Path) -> None:
    example = REPO / "config.example.toml"
    if not example.exists():
        pytest.skip("config.example.toml is not in the repository yet")
    settings = load_settings(example, conf_d=tmp_path / "no-drop-ins")
    assert settings.sources and settings.outputs


@pytest.mark.parametrize("variable", ["LOGFERRY_BOGUS", "LOGFERRY_STATEDIR", "logferry_bogus", "LOGFERRY_BOGUS__X"])
def test_unknown_environment_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, BASE)
    assert f"{variable}: unknown environment variable" in str(info.value)


def test_every_unknown_environment_variable_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGFERRY_ONE", "1")
    monkeypatch.setenv("LOGFERRY_TWO", "2")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, BASE)
    assert "LOGFERRY_ONE:" in str(info.value) and "LOGFERRY_TWO:" in str(info.value)


@pytest.mark.parametrize("variable", ["LOGFERRY_AGENT_LOG", "LOGFERRY_CACHE", "LOGFERRY_ES_JAVA_HOME",
                                      "LOGFERRY_TEST_ES_URL", "LOGFERRY_TEST_ANYTHING", "LOGFERRY_LOG_LEVEL",
                                      "logferry_log_level"])
def test_the_projects_own_variables_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "debug")
    assert load(tmp_path, BASE).sources["agent"].tag == "ai.chat"


def test_unknown_nested_environment_key_names_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGFERRY_OUTPUTS__DEBUG__PATHH", "/x.jsonl")
    with pytest.raises(ConfigError, match=r"outputs\.debug\.pathh: unknown key"):
        load(tmp_path, BASE)


def test_environment_check_applies_to_the_cli(tmp_path: Path) -> None:
    """``LOGFERRY_BOGUS=1 logferry check -c FILE`` fails and names the variable."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LOGFERRY_")}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "check", "-c", str(write(tmp_path, BASE))],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**env, "LOGFERRY_BOGUS": "1"},
    )
    assert result.returncode != 0
    assert "LOGFERRY_BOGUS: unknown environment variable" in result.stderr


# Keys the example leaves out on purpose: secrets belong in the environment or a *_file, never in the file.
SECRETS = {"password", "api_key", "hash_key"}
# Commented-out keys whose value is an example, not the default.
EXAMPLE_VALUES = {"addressing_style"}


def example_tables() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each table of config.example.toml: (keys set, keys commented out as ``#key = value``)."""
    tables: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {"": ({}, {})}
    current = ""
    for line in (REPO / "config.example.toml").read_text().splitlines():
        if header := re.fullmatch(r"\[([\w.-]+)\]", line):
            current = header.group(1)
            tables[current] = ({}, {})
        elif key := re.fullmatch(r"(#?)(\w+) = (.*)", line):
            commented, name, value = key.groups()
            tables[current][1 if commented else 0][name] = tomllib.loads(f"v = {value}")["v"]
    return tables


def value_of(table: str, settings: Settings) -> Any:
    """What a table of the example holds once loaded: a model, or a dict of them (``[sources]``)."""
    value: Any = settings
    for part in table.split(".") if table else []:
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def model_of(table: str, settings: Settings) -> type[BaseModel]:
    """The config model a table of the example is validated by."""
    return type(value_of(table, settings))


def parent_key(table: str, settings: Settings) -> tuple[type[BaseModel], str]:
    """The key a table is of the nearest model above it: [health] and [sources.agent] of Settings,
    [outputs.x.buffer] of outputs.x, [transforms.cost.prices.gpt-4o] of transforms.cost."""
    parts = table.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        parent = value_of(".".join(parts[:cut]), settings)
        if isinstance(parent, BaseModel):
            return type(parent), parts[cut]
    raise AssertionError(table)


def test_example_config_names_every_key_with_its_default(tmp_path: Path) -> None:
    """config.example.toml shows every settable key: set, or commented out with its default."""
    settings = load_settings(REPO / "config.example.toml", conf_d=tmp_path / "no-drop-ins")
    shown: dict[type[BaseModel], set[str]] = {}
    for table, (values, commented) in example_tables().items():
        model = model_of(table, settings)
        fields = model.model_fields
        assert set(commented) <= set(fields), f"[{table}]: commented-out keys that do not exist"
        for name, value in commented.items():
            default = fields[name].get_default(call_default_factory=True)
            if default is not None and name not in EXAMPLE_VALUES:
                assert value == default, f"[{table}] #{name} = {value!r}: the default is {default!r}"
        shown.setdefault(model, set()).update(values, commented)
        if table:
            parent, key = parent_key(table, settings)
            shown.setdefault(parent, set()).add(key)
    for model, names in shown.items():
        missing = set(model.model_fields) - names - SECRETS
        assert not missing, f"{model.__name__}: keys missing from config.example.toml: {sorted(missing)}"


def test_transforms_named_by_a_source_or_output_must_exist(tmp_path: Path) -> None:
    text = BASE.replace('tag = "ai.chat"', 'tag = "ai.chat"\ntransforms = ["pii"]') + '\n[outputs.debug2]\n' \
        'type = "file"\npath = "/x.jsonl"\ntransforms = ["pii", "costs"]\n\n[transforms.pii]\ntype = "redact"\n'
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert "outputs.debug2.transforms: no [transforms.costs] table" in str(info.value)
    assert "sources.agent" not in str(info.value)


def test_a_transform_of_unknown_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"transforms\.pii\.type: is 'scrub'; expected one of"):
        load(tmp_path, BASE + '\n[transforms.pii]\ntype = "scrub"\n')


def test_transform_keys_are_checked_with_their_path(tmp_path: Path) -> None:
    text = BASE + '\n[transforms.cost]\ntype = "cost"\n[transforms.cost.prices.gpt]\ninput = -1\noutput = 2\n'
    with pytest.raises(ConfigError, match=r"transforms\.cost\.prices\.gpt\.input: Input should be greater"):
        load(tmp_path, text)
