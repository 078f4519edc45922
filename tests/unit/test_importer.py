"""``logferry import``: Fluentd configs in, logferry TOML and a report out (golden files), checked."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.config import load_settings, settings_from_dict
from pipeline.errors import ConfigError
from pipeline.importer.fluentd_conf import parse_file, parse_text
from pipeline.importer.translate import NothingToRun, translate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fluentd"
EXPECTED = FIXTURES / "expected"
REPO = Path(__file__).resolve().parents[2]
GOLDEN = ["td-agent", "v1_app", "v0_legacy", "v1_same_as_v0", "routing", "forward_aggregator", "forward_aggregator_v0",
          "opensearch"]


def run_import(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command's exit status, stdout and stderr, with the fixture directory left out of paths."""
    status = main(["import", *args])
    out, err = capsys.readouterr()
    prefix = str(FIXTURES) + "/"
    return status, out.replace(prefix, ""), err.replace(prefix, "")


@pytest.mark.parametrize("name", GOLDEN)
def test_each_config_gives_its_expected_toml_and_report(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, toml_text, report = run_import(capsys, str(FIXTURES / f"{name}.conf"))
    if os.environ.get("LOGFERRY_TEST_REGENERATE"):
        EXPECTED.mkdir(exist_ok=True)
        (EXPECTED / f"{name}.toml").write_text(toml_text)
        (EXPECTED / f"{name}.report").write_text(f"exit status {status}\n{report}")
    assert toml_text == (EXPECTED / f"{name}.toml").read_text()
    assert f"exit status {status}\n{report}" == (EXPECTED / f"{name}.report").read_text()
    settings_from_dict(tomllib.loads(toml_text))  # what `logferry check` does


def test_partly_translated_configs_exit_2_and_complete_ones_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_import(capsys, str(FIXTURES / "td-agent.conf"))[0] == 0
    assert run_import(capsys, str(FIXTURES / "routing.conf"))[0] == 2


def _dump(settings: Any) -> dict[str, Any]:
    return dict(settings.model_dump(mode="json"))


def test_the_seed_td_agent_conf_becomes_config_example_toml_key_for_key() -> None:
    """Every table td-agent.conf describes equals config.example.toml's, except the differences named here."""
    imported = _dump(settings_from_dict(translate(parse_file(FIXTURES / "td-agent.conf")).document))
    example = _dump(load_settings(REPO / "config.example.toml", conf_d=REPO / "no-such-dir"))
    expected = {**example, "sources": {"tail": example["sources"]["agent"]},
                "outputs": {"search": example["outputs"]["search"], "archive": example["outputs"]["archive"]}}
    # What td-agent.conf says where the example says otherwise:
    expected["sources"]["tail"]["read_from_head"] = False        # not set there: Fluentd's default
    expected["outputs"]["search"]["hosts"] = ["http://elasticsearch.local:9200"]  # host + port
    expected["outputs"]["archive"]["store_as"] = "json"          # store_as json
    for output in expected["outputs"].values():
        output["match"] = ["ai.interactions"]                    # the exact tags routed (the example: ai.**)
    # Tuning the example adds that td-agent.conf does not have (logferry's defaults stay):
    expected["outputs"]["search"]["buffer"].update(flush_interval=5.0, workers=1)
    expected["outputs"]["archive"]["buffer"].update(chunk_limit_bytes=8 << 20, total_limit_bytes=512 << 20)
    # The redaction and cost the example adds (td-agent.conf has neither):
    expected["transforms"] = {}
    expected["outputs"]["search"]["transforms"] = []
    assert imported == expected


def test_v0_12_and_v1_syntax_of_one_pipeline_give_the_same_tables() -> None:
    old = translate(parse_file(FIXTURES / "v0_legacy.conf")).document
    new = translate(parse_file(FIXTURES / "v1_same_as_v0.conf")).document
    assert old == new


def test_first_match_wins_across_overlapping_patterns_and_labels() -> None:
    document = translate(parse_file(FIXTURES / "routing.conf")).document
    matches = {name: out["match"] for name, out in document["outputs"].items()}
    tags = {name: src["tag"] for name, src in document["sources"].items()}
    assert tags == {"forward": "", "tail": "ai.debug", "tail_2": "ai", "tail_3": "batch.jobs"}
    # the forward source's clients choose their tags: the ai.** match's pattern is added for them
    assert matches == {"debug_copy": ["ai.debug"], "search": ["ai", "ai.**"], "search_2": ["legacy.**"],
                       "batch_search": ["batch.jobs"]}


def test_secrets_are_never_written_to_the_toml_or_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    _, toml_text, report = run_import(capsys, str(FIXTURES / "v1_app.conf"))
    for secret in ("AKIAEXAMPLEEXAMPLE00", "wJalrXUtnFEMI", "ES_PASSWORD}"):
        assert secret not in toml_text and secret not in report
    assert "LOGFERRY_OUTPUTS__ES_MAIN__PASSWORD" in report and 'password_file = "/etc/logferry/es_main-password"' \
        in toml_text


def test_an_unknown_parameter_is_reported_with_its_line_and_the_value_of_a_secret_looking_one_hidden() -> None:
    root = parse_text("<source>\n@type tail\npath /a/*.log\ntag a\nformat json\nfrobnicate 3\nsecret_token xyz\n"
                      "</source>\n<match **>\n@type file\npath /o/a\n</match>\n", "t.conf")
    report = translate(root).report.render()
    assert "t.conf:6  frobnicate 3: <source> @type tail has no such setting" in report
    assert "t.conf:7  secret_token (value hidden)" in report and "xyz" not in report


def test_a_brace_of_whole_patterns_routes_as_fluentd_routes_it() -> None:
    """``{ai.*,ml.*}`` holds two patterns (fluentd's MatchPattern), not two literal strings: the tail source's
    ai.chat goes to the first match, not to the catch-all after it."""
    root = parse_text("<source>\n@type tail\npath /a/*.log\ntag ai.chat\nformat json\n</source>\n"
                      "<match {ai.*,ml.*}>\n@type file\npath /o/ai\n</match>\n"
                      "<match **>\n@type file\npath /o/rest\n</match>\n", "t.conf")
    outputs = translate(root).document["outputs"]
    assert {name: output["match"] for name, output in outputs.items()} == {"file": ["ai.chat"], "file_2": []}


def test_a_tail_path_with_strftime_placeholders_becomes_a_glob_and_is_reported() -> None:
    root = parse_text("<source>\n@type tail\npath /logs/%Y-%m-%d/agent.log\ntag ai\nformat json\n</source>\n"
                      "<match **>\n@type file\npath /o/a\n</match>\n", "t.conf")
    done = translate(root)
    assert done.document["sources"]["tail"]["paths"] == ["/logs/*-*-*/agent.log"]
    assert "strftime placeholders become *" in done.report.render()
    broad = parse_text("<source>\n@type tail\npath /logs/app/*\ntag ai\nformat json\n</source>\n"
                       "<match **>\n@type file\npath /o/a\n</match>\n", "t.conf")
    assert "the glob also matches rotated files" in translate(broad).report.render()


def test_include_follows_globs_in_name_order_with_their_own_file_names(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "main.conf").write_text("@include conf.d/*.conf\n<match **>\n@type null\n</match>\n")
    (tmp_path / "conf.d" / "20-out.conf").write_text("<match ai.**>\n@type file\npath /o/ai\n</match>\n")
    (tmp_path / "conf.d" / "10-in.conf").write_text("<source>\n@type tail\npath /a.log\ntag ai.x\nformat json\n"
                                                   "</source>\n")
    root = parse_file(tmp_path / "main.conf")
    assert [(d.name, d.where.replace(str(tmp_path) + "/", "")) for d in root.children] == [
        ("source", "conf.d/10-in.conf:1-6"), ("match", "conf.d/20-out.conf:1-4"), ("match", "main.conf:2-4")]
    assert translate(root).document["outputs"]["file"]["match"] == ["ai.x"]


@pytest.mark.parametrize(("text", "message"), [
    ("<source>\n@type tail\n", "t.conf:1: <source> is never closed"),
    ("<source>\n</match>\n", "t.conf:2: </match> closes <source> of line 1"),
    ("key \"unterminated\n", "t.conf:1: unterminated double-quoted value"),
])
def test_syntax_errors_name_the_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_text(text, "t.conf")


def test_a_config_with_nothing_translatable_is_refused_without_writing(tmp_path: Path) -> None:
    conf = tmp_path / "only-forward.conf"
    conf.write_text("<source>\n@type forward\n</source>\n<match **>\n@type stdout\n</match>\n")
    out = tmp_path / "logferry.toml"
    assert main(["import", str(conf), "-o", str(out)]) == 2
    assert not out.exists()


def test_the_written_file_passes_logferry_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "logferry.toml"
    assert main(["import", str(FIXTURES / "v1_app.conf"), "-o", str(out), "--state-dir", str(tmp_path / "s")]) == 2
    assert main(["check", "-c", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["import", str(FIXTURES / "v1_app.conf"), "-o", str(out)]) == 2  # exists: refused without --force


def test_an_elasticsearch_address_computed_by_ruby_leaves_the_output_out_rather_than_guessing() -> None:
    root = parse_text("<source>\n@type tail\npath /a/*.log\ntag a\nformat json\n</source>\n"
                      "<match a>\n@type copy\n<store>\n@type elasticsearch\nhost \"#{ENV['ES_HOST']}\"\n</store>\n"
                      "<store>\n@type file\npath /o/a\n</store>\n</match>\n", "t.conf")
    translation = translate(root)
    assert list(translation.document["outputs"]) == ["file"]
    assert "t.conf:11  host #{ENV['ES_HOST']}: where to write is computed by Ruby" in translation.report.render()
    assert translation.report.exit_status == 2


def _one_output(body: str) -> tuple[dict[str, Any], str]:
    root = parse_text("<source>\n@type tail\npath /a/*.log\ntag a\nformat json\n</source>\n"
                      f"<match a>\n{body}\n</match>\n", "t.conf")
    translation = translate(root)
    return next(iter(translation.document["outputs"].values())), translation.report.render()


def test_s3_object_key_formats_keep_a_chunk_id_so_uploads_never_overwrite_each_other() -> None:
    out, report = _one_output("@type s3\ns3_bucket b-1\n"
                              "s3_object_key_format %{path}%{time_slice}-%{uuid_flush}.%{file_extension}")
    assert out["object_key_format"] == "{path}{time}-{chunk_id}.{ext}"
    assert ("object names change: {time} as 20261118T110000Z (not in time_slice_format); {chunk_id} as 16 hex "
            "digits (not a UUID); {ext} as jsonl, jsonl.gz or jsonl.zst (not json, gz or zst)") in report
    out, report = _one_output("@type s3\ns3_bucket b-1\ns3_object_key_format %{path}%{time_slice}.%{file_extension}")
    assert out["object_key_format"] == "{path}{time}-{chunk_id}.{ext}"
    assert "each chunk's key holds its id" in report


def test_file_paths_take_the_time_slice_where_fluentd_puts_it() -> None:
    out, _ = _one_output("@type file\npath /o/app.*.jsonl\n<buffer time>\ntimekey 1h\n</buffer>")
    assert out["path"] == "/o/app.%Y%m%d%H.jsonl"
    assert out["buffer"] == {"timekey": 3600, "timekey_wait": 600, "flush_mode": "lazy"}
    with pytest.raises(NothingToRun, match=r"path /o/\$\{tag\}/app: placeholders .* output left out"):
        _one_output("@type file\npath /o/${tag}/app")


def test_file_names_keep_fluentds_suffix_settings_and_what_has_no_equivalent_is_reported() -> None:
    out, report = _one_output("@type file\npath /o/a\npath_suffix .jsonl\nappend true\nsymlink_path /o/current")
    assert out["path"] == "/o/a.%Y%m%d.jsonl"
    assert "t.conf:12  symlink_path /o/current: <match a> @type file has no such setting in logferry" in report
    assert "append" not in report
    out, report = _one_output("@type file\npath /o/a\nadd_path_suffix false")
    assert out["path"] == "/o/a.%Y%m%d"
    assert "append false: Fluentd wrote each chunk to a file of its own" in report
    out, _ = _one_output("@type file\npath /o/a.%Y-%m-%d\ncompress gzip")
    assert out["path"] == "/o/a.%Y-%m-%d.log.gz"


def test_multi_line_arrays_and_quoted_values_parse_as_fluentd_reads_them() -> None:
    root = parse_text('<source>\n@type tail\npath ["/a/*.log",\n  "/b/*.log"]\ntag a # routing\nformat \'json\'\n'
                      '</source>\n', "t.conf")
    source = root.children[0]
    assert [(p.key, p.value, p.line) for p in source.params] == [
        ("@type", "tail", 2), ("path", '["/a/*.log","/b/*.log"]', 3), ("tag", "a", 5), ("format", "json", 6)]


def test_a_tag_with_star_routes_each_path_pattern_and_reports_when_they_part() -> None:
    root = parse_text("<source>\n@type tail\npath /a/x.log,/b/y.log\ntag app.*\nformat json\n</source>\n"
                      "<match app.a.**>\n@type file\npath /o/a\n</match>\n<match app.**>\n@type file\npath /o/b\n"
                      "</match>\n", "t.conf")
    translation = translate(root)
    assert translation.document["sources"]["tail"]["tag"] == "app"
    assert translation.document["outputs"]["file"]["match"] == ["app"]
    assert translation.document["outputs"]["file_2"]["match"] == []
    assert "routed the files of its path patterns to different outputs" in translation.report.render()


def test_stdout_and_null_stores_in_a_copy_stop_there_and_stdout_points_to_tap() -> None:
    _, report = _one_output("@type copy\n<store>\n@type stdout\n</store>\n<store>\n@type null\n</store>\n"
                            "<store>\n@type file\npath /o/a\n</store>")
    assert "<store> @type stdout: use `logferry tap [--tag PATTERN]`" in report
    assert "<store> @type null: records of these tags are read and dropped" in report


def test_two_sources_sharing_a_tag_but_routed_apart_are_reported() -> None:
    root = parse_text("<source>\n@type tail\npath /a/x.log\ntag app.*\nformat json\n</source>\n"
                      "<source>\n@type tail\npath /b/y.log\ntag app.*\nformat json\n</source>\n"
                      "<match app.a.**>\n@type file\npath /o/a\n</match>\n<match app.**>\n@type file\npath /o/b\n"
                      "</match>\n", "t.conf")
    report = translate(root).report.render()
    assert "source tail_2 has the tag 'app' too, so its records reach this output as well" in report


def test_what_fluentd_did_with_the_event_time_field_and_its_local_time_windows_is_reported() -> None:
    def report(parse: str, buffer: str) -> str:
        root = parse_text(f"<source>\n@type tail\npath /a/*.log\ntag a\n<parse>\n@type json\n{parse}\n</parse>\n"
                          "</source>\n<match a>\n@type file\npath /o/a\nappend true\nformat json\n"
                          f"<buffer time>\n{buffer}\n</buffer>\n</match>\n", "t.conf")
        return translate(root).report.render()

    fluentd_defaults = report("time_key ts\ntime_format %d/%b/%Y:%H:%M:%S %z", "timekey 1h")
    assert "time_key ts: Fluentd removed `ts` from the record (keep_time_key false); logferry keeps it" \
        in fluentd_defaults
    assert "time_format %d/%b/%Y:%H:%M:%S %z: logferry reads `ts` as epoch seconds or ISO-8601 only" in fluentd_defaults
    assert "timekey_use_utc false: logferry cuts time windows and names their files" in fluentd_defaults
    assert "timekey_zone +0900: " in report("time_key ts", "timekey 1h\ntimekey_zone +0900")
    as_logferry = report("time_key ts\nkeep_time_key true\ntime_type float", "timekey 1h\ntimekey_use_utc true")
    assert "Translated with a difference" not in as_logferry, as_logferry


def _forwarded(matches: str, source: str = "") -> tuple[dict[str, Any], str]:
    root = parse_text(f"<source>\n@type forward\n{source}\n</source>\n{matches}", "t.conf")
    translation = translate(root)
    return {n: o["match"] for n, o in translation.document["outputs"].items()}, translation.report.render()


def test_a_forward_source_keeps_its_clients_tags_and_outputs_take_the_patterns_fluentd_matched() -> None:
    matches, report = _forwarded("<match ai.**>\n@type file\npath /o/ai\n</match>\n"
                                 "<match batch.*>\n@type file\npath /o/batch\n</match>\n")
    assert matches == {"file": ["ai.**"], "file_2": ["batch.*"]}
    assert "reach this output too" not in report  # disjoint patterns: first-match order is kept exactly


def test_forwarded_tags_an_earlier_match_took_are_reported_and_a_shadowed_match_gets_none() -> None:
    matches, report = _forwarded("<match health.**>\n@type null\n</match>\n"
                                 "<match ai.debug>\n@type file\npath /o/debug\nappend true\n</match>\n"
                                 "<match health.check>\n@type file\npath /o/never\nappend true\n</match>\n"
                                 "<match **>\n@type file\npath /o/rest\nappend true\n</match>\n")
    assert matches == {"file": ["ai.debug"], "file_2": [], "file_3": ["**"]}
    assert ("t.conf:18-22  <match **>: records of source forward (tags chosen by its clients) whose tag an earlier "
            "match took in Fluentd reach this output too: <match health.**> (t.conf:5-7), <match ai.debug> "
            "(t.conf:8-12); logferry's match cannot leave tags out") in report, report


def test_a_forward_source_in_a_label_and_with_add_tag_prefix_routes_the_clients_own_tags() -> None:
    matches, report = _forwarded("<label @IN>\n<match fwd.ai.**>\n@type file\npath /o/ai\n</match>\n"
                                 "<match other.**>\n@type file\npath /o/never\n</match>\n"
                                 "<match **>\n@type file\npath /o/rest\n</match>\n</label>\n",
                                 "@label @IN\nadd_tag_prefix fwd")
    assert matches == {"file": ["ai.**"], "file_2": [], "file_3": ["**"]}
    assert "add_tag_prefix fwd: logferry keeps the client's tag as sent" in report


def test_forward_security_and_tls_translate_and_the_shared_key_is_never_copied(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = tmp_path / "fwd.conf"
    conf.write_text("<source>\n@type forward\n@id edge\nport 24230\n<transport tls>\ncert_path /c.pem\n"
                    "private_key_path /k.pem\n</transport>\n<security>\nself_hostname agg-1\n"
                    "shared_key hunter2-fleet\n</security>\n</source>\n<match **>\n@type file\npath /o/a\n"
                    "</match>\n")
    status, toml_text, report = run_import(capsys, str(conf))
    source = tomllib.loads(toml_text)["sources"]["edge"]
    assert source == {"type": "forward", "tag": "", "bind": "0.0.0.0", "port": 24230, "self_hostname": "agg-1",
                      "tls_cert": "/c.pem", "tls_key": "/k.pem"}
    assert "hunter2" not in toml_text and "hunter2" not in report
    assert "set LOGFERRY_SOURCES__EDGE__SHARED_KEY to the key" in report


def test_an_opensearch_endpoint_becomes_sigv4_keys_and_its_aws_keys_are_never_copied(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = tmp_path / "os.conf"
    conf.write_text("<source>\n@type tail\npath /a/*.log\ntag a\nformat json\n</source>\n"
                    "<match **>\n@type opensearch\n@id serverless\nindex_name ai\nuser someone\n"
                    "<endpoint>\nurl https://abc.eu-west-1.aoss.amazonaws.com/\nregion eu-west-1\n"
                    "aws_service_name aoss\naccess_key_id AKIAEXAMPLEOPENSRCH\nsecret_access_key wJalrOpenSearchKey\n"
                    "</endpoint>\n</match>\n")
    status, toml_text, report = run_import(capsys, str(conf))
    output = tomllib.loads(toml_text)["outputs"]["serverless"]
    assert output == {"type": "opensearch", "match": ["a"], "hosts": ["https://abc.eu-west-1.aoss.amazonaws.com"],
                      "index": "ai", "aws_sigv4": True, "aws_region": "eu-west-1", "aws_service": "aoss"}
    assert "AKIAEXAMPLEOPENSRCH" not in toml_text + report and "wJalrOpenSearchKey" not in toml_text + report
    assert "access_key_id (not copied): logferry signs with the standard AWS chain" in report
    assert "user someone: not used: <endpoint> says where to send and how to sign" in report


def test_a_forward_source_with_a_fixed_tag_is_routed_by_it_with_its_prefix() -> None:
    root = parse_text("<source>\n@type forward\ntag app\nadd_tag_prefix fleet\n</source>\n"
                      "<match fleet.app>\n@type file\npath /o/a\nappend true\n</match>\n"
                      "<match **>\n@type file\npath /o/b\nappend true\n</match>\n", "t.conf")
    document = translate(root).document
    assert document["sources"]["forward"]["tag"] == "fleet.app"
    assert {n: o["match"] for n, o in document["outputs"].items()} == {"file": ["fleet.app"], "file_2": []}
