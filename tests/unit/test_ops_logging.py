"""The daemon's own log: one line per event, no record contents, no credentials."""

from __future__ import annotations

import logging
import sys

from pipeline.cli import OneLineFormatter, main, one_line
from pipeline.errors import ConfigError
from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig, without_credentials
from pipeline.outputs.elasticsearch.output import loggable_reason


def record(msg: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    return logging.LogRecord("logferry.test", logging.ERROR, __file__, 1, msg, args,
                             sys.exc_info() if exc_info else None)


def test_a_multi_line_config_error_is_one_line():
    error = ConfigError("/etc/logferry/logferry.toml: invalid configuration:\n  a.b: unknown key\n  c: bad\n")
    line = OneLineFormatter("%(levelname)s %(message)s").format(record("refused: %s", error))
    assert line == "ERROR refused: /etc/logferry/logferry.toml: invalid configuration: | a.b: unknown key | c: bad"


def test_a_traceback_is_one_line_with_the_message_first():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        line = OneLineFormatter("%(message)s").format(record("output failed", exc_info=True))
    assert "\n" not in line and "\r" not in line
    assert line.startswith("output failed | Traceback (most recent call last): | File ")
    assert line.endswith("ValueError: boom | second line")


def test_credentials_in_urls_are_left_out_of_any_line():
    assert one_line("cannot reach http://elastic:s3cret@es1:9200/_bulk") == "cannot reach http://es1:9200/_bulk"
    assert one_line("s3://bucket/key and user@example.com stay") == "s3://bucket/key and user@example.com stay"


def test_elasticsearch_reasons_lose_the_quoted_value():
    reason = ("[1:30] failed to parse field [tokens] of type [long] in document with id 'r-1'. Preview of "
              "field's value: 'the prompt text' (caused by illegal_argument_exception: For input string: \"x\")")
    assert loggable_reason(reason) == ("[1:30] failed to parse field [tokens] of type [long] in document "
                                       "with id 'r-1'. (value left out)")
    assert loggable_reason("version conflict") == "version conflict"


def test_hosts_are_logged_without_their_credentials():
    assert without_credentials("https://elastic:s3cret@es1:9200") == "https://es1:9200"
    assert without_credentials("http://token@es2:9200/prefix") == "http://es2:9200/prefix"
    config = ElasticsearchOutputConfig(type="elasticsearch", index="ai",
                                       hosts=["https://u:p%40ss@es1:9200", "http://es2:9200"])
    assert config.hosts_for_logs == "https://es1:9200, http://es2:9200"


def test_check_prints_the_config_without_any_secret(tmp_path, capsys):
    config = tmp_path / "logferry.toml"
    config.write_text('[sources.a]\ntype = "tail"\npaths = ["/nonexistent/*.log"]\ntag = "a"\n'
                      '[outputs.s]\ntype = "elasticsearch"\nhosts = ["https://elastic:hunter2@es1:9200"]\n'
                      'index = "x"\nusername = "elastic"\npassword = "s3cret-pw"\n')
    assert main(["check", "-c", str(config), "--conf-d", str(tmp_path / "none")]) == 0
    printed = capsys.readouterr().out
    assert "hunter2" not in printed and "s3cret-pw" not in printed
    assert '"https://es1:9200"' in printed and '"password": "**********"' in printed
