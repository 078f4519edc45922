"""The redact transform: modes, summary, nested and odd fields, escapes, huge fields, bad config, dead letters."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import generator
from pipeline.config import settings_from_dict
from pipeline.errors import ConfigError
from pipeline.runtime.metrics import render
from pipeline.transforms.redact.config import RedactTransformConfig
from pipeline.transforms.redact.transform import RedactTransform

EMAIL = "maria.garcia@example.com"
CARD = "4111 1111 1111 1111"
KEY = "sk-proj-" + "A1b2C3d4" * 6


def transform(**config: Any) -> RedactTransform:
    return RedactTransform("pii", RedactTransformConfig(type="redact", **config))


def run(t: RedactTransform, *records: dict[str, Any]) -> list[dict[str, Any]]:
    lines = [orjson.dumps(r) + b"\n" for r in records]
    out, _ = t.apply(lines, [dict(r) for r in records])
    return [orjson.loads(line) for line in out]


def test_masks_each_kind_and_counts_it_in_the_summary() -> None:
    (out,) = run(transform(), {"input": f"mail {EMAIL}, card {CARD}", "output": f"use {KEY} and {EMAIL}"})
    assert out["input"] == "mail [REDACTED:email], card [REDACTED:payment_card]"
    assert out["output"] == "use [REDACTED:openai_key] and [REDACTED:email]"
    assert out["redactions"] == {"email": 2, "payment_card": 1, "openai_key": 1}


def test_a_record_without_findings_keeps_its_bytes_and_gets_no_summary() -> None:
    line = b'{"input": "nothing here, version 1.2.3 at 12:30:45", "output": "ok",  "n": 1}\n'
    t = transform()
    out, _ = t.apply([line], [orjson.loads(line)])
    assert out[0] is line


@pytest.mark.parametrize("visible", ["hi", f"and {CARD}"])
def test_a_key_written_twice_keeps_no_unchecked_value_in_the_stored_line(visible: str) -> None:
    """The parse keeps a key's last value; the line held the first one too, which nothing checked."""
    line = f'{{"input": "mail {EMAIL} key {KEY}", "n": 1, "input": "{visible}"}}\n'.encode()
    t = transform()
    for batch in range(3):  # the line filter, then (most lines flagged) the field-level check of every record
        (out,), _ = t.apply([line], [orjson.loads(line)])
        assert EMAIL.encode() not in out and KEY.encode() not in out, batch
        assert orjson.loads(out)["input"] in (visible, "and [REDACTED:payment_card]")
    assert t.duplicate_keys == (3 if visible == "hi" else 0)


def test_a_key_written_twice_is_caught_without_the_line_filter_too() -> None:
    """A user pattern turns the line filter off: a scanned key written twice at the top level is still seen."""
    t = transform(patterns={"employee": {"regex": "EMP-[0-9]{6}", "anchor": "EMP-[0-9]{6}"}})
    assert t.line_filter is None
    line = f'{{"input": "mail {EMAIL} EMP-123456", "input": "hi"}}\n'.encode()
    (out,), _ = t.apply([line], [orjson.loads(line)])
    assert out == b'{"input":"hi"}\n'


def test_lines_nested_deeper_than_json_writes_neither_stop_redaction_nor_keep_a_secret() -> None:
    """orjson reads 1,024 levels and writes 255; Python's json goes to about 1,000."""
    deep = "[" * 1000 + "]" * 1000
    lines = [f'{{"input": "a\\/b", "x": {deep}}}\n'.encode(),  # flagged (an escape), nothing to redact
             f'{{"input": "mail {EMAIL}", "x": {"[" * 300 + "]" * 300}}}\n'.encode(),  # to redact, too deep to write
             f'{{"input": "key {KEY}", "x": {"[" * 300 + "]" * 300}, "input": "hi"}}\n'.encode()]
    out, _ = transform().apply(lines, [orjson.loads(line) for line in lines])
    assert out[0] == lines[0]
    assert EMAIL.encode() not in out[1] and b"[REDACTED:email]" in out[1]
    assert KEY.encode() not in out[2] and orjson.loads(out[2])["input"] == "hi"


def test_a_value_a_forward_client_sent_as_msgpack_bin_is_checked_as_the_text_it_is_stored_as() -> None:
    records = [{"input": f"mail {EMAIL}".encode(), "output": [b"key " + KEY.encode()], "n": 1}]
    lines = [orjson.dumps(r, default=lambda v: v.decode()) + b"\n" for r in records]  # as serialise_records does
    (out,), _ = transform().apply(lines, records)
    assert orjson.loads(out)["input"] == "mail [REDACTED:email]"
    assert orjson.loads(out)["output"] == ["key [REDACTED:openai_key]"]


def test_only_the_configured_fields_are_scanned() -> None:
    (out,) = run(transform(fields=["input"]), {"input": EMAIL, "output": EMAIL, "user": EMAIL})
    assert (out["input"], out["output"], out["user"]) == ("[REDACTED:email]", EMAIL, EMAIL)


def test_nested_message_lists_are_scanned() -> None:
    messages = [{"role": "system", "content": "be nice"},
                {"role": "user", "content": [{"type": "text", "text": f"my card is {CARD}"}]},
                {"role": "assistant", "content": f"noted: {EMAIL}", "meta": {"n": 3}}]
    (out,) = run(transform(), {"messages": messages})
    assert out["messages"][1]["content"][0]["text"] == "my card is [REDACTED:payment_card]"
    assert out["messages"][2] == {"role": "assistant", "content": "noted: [REDACTED:email]", "meta": {"n": 3}}
    assert out["messages"][0] == messages[0]


def test_numbers_in_scanned_fields_are_checked_and_other_values_kept() -> None:
    record = {"input": {"card": 4111111111111111, "n": 12, "ok": True, "none": None, "f": 1.5}}
    (out,) = run(transform(), record)
    assert out["input"] == {"card": "[REDACTED:payment_card]", "n": 12, "ok": True, "none": None, "f": 1.5}


def test_hash_mode_is_keyed_and_joinable(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"s3cret\n")
    t = transform(detectors={"email": "hash"}, hash_key_file=key_file)
    first, second = run(t, {"input": EMAIL}, {"output": f"again {EMAIL}"})
    digest = hmac.new(b"s3cret", EMAIL.encode(), hashlib.sha256).hexdigest()[:16]
    assert first["input"] == f"[HMAC:email:{digest}]"
    assert second["output"] == f"again [HMAC:email:{digest}]"
    other = RedactTransform("pii", RedactTransformConfig(type="redact", detectors={"email": "hash"}, hash_key="x"))
    assert run(other, {"input": EMAIL})[0]["input"] != first["input"], "another key, another value"


def test_drop_mode_removes_the_field() -> None:
    (out,) = run(transform(detectors={"private_key": "drop"}),
                 {"input": "-----BEGIN PRIVATE KEY-----\nMIIBVQ\n-----END PRIVATE KEY-----", "output": "fine"})
    assert "input" not in out and out["output"] == "fine" and out["redactions"] == {"private_key": 1}


def test_off_turns_a_detector_off() -> None:
    (out,) = run(transform(detectors={"email": "off"}), {"input": f"{EMAIL} {CARD}"})
    assert out["input"] == f"{EMAIL} [REDACTED:payment_card]"


def test_json_escapes_do_not_hide_a_value() -> None:
    # \u0040 is "@", \/ is "/": the raw bytes hold no e-mail or "Bearer x/y", the decoded string does.
    line = b'{"input": "write to maria\\u0040example.com", "output": "Bearer abc\\/defghijklmnop"}\n'
    out, _ = transform().apply([line], [orjson.loads(line)])
    record = orjson.loads(out[0])
    assert record["input"] == "write to [REDACTED:email]"
    assert record["output"] == "Bearer [REDACTED:bearer_token]"


def test_a_huge_field_is_scanned_to_its_end() -> None:
    text = "lorem ipsum 12:30 v1.2.3 " * 200_000 + EMAIL
    (out,) = run(transform(), {"input": text})
    assert out["input"].endswith("[REDACTED:email]") and EMAIL not in out["input"]


def test_user_patterns_with_and_without_an_anchor() -> None:
    t = transform(patterns={"employee": {"regex": "EMP-[0-9]{6}", "anchor": "EMP-[0-9]{6}"},
                            "ticket": {"regex": r"ticket (?P<value>[A-Z]{3}-[0-9]+)", "mode": "mask"}})
    (out,) = run(t, {"input": "EMP-123456 filed ticket ABC-42"})
    assert out["input"] == "[REDACTED:employee] filed ticket [REDACTED:ticket]"
    assert out["redactions"] == {"employee": 1, "ticket": 1}


def test_chained_redact_transforms_add_up_their_counts() -> None:
    first, second = transform(fields=["input"]), transform(fields=["output"])
    line = orjson.dumps({"input": EMAIL, "output": EMAIL}) + b"\n"
    lines, records = first.apply([line], [orjson.loads(line)])
    lines, _ = second.apply(lines, records)
    assert orjson.loads(lines[0])["redactions"] == {"email": 2}


def test_dead_letter_lines_are_redacted_and_stats_hold_no_text() -> None:
    t = transform()
    entry = t.dead_letter({"reason": "invalid JSON", "line": f'{{"input": "{EMAIL}'})
    assert entry["line"] == '{"input": "[REDACTED:email]' and entry["redactions"] == {"email": 1}
    raw = t.dead_letter({"reason": "invalid UTF-8", "line_base64": "bWFpbCBtYXJpYUBleGFtcGxlLmNvbSD/"})
    assert raw["line"] == "mail [REDACTED:email] \ufffd" and "line_base64" not in raw
    assert EMAIL not in repr(t.stats())


def test_the_copy_of_an_oversized_line_is_redacted_in_place(tmp_path: Path) -> None:
    blob = tmp_path / "agent-1-0.line"
    blob.write_bytes(f'{{"input": "mail {EMAIL}, card {CARD}, then {KEY} cut in the midd'.encode() + "é".encode()[:1])
    entry = transform().dead_letter({"reason": "line longer than max_line_bytes (9000 bytes)", "offset": 0,
                                     "length": 9000, "blob": str(blob), "blob_bytes": 4096, "truncated": True})
    text = blob.read_text()
    assert text == ('{"input": "mail [REDACTED:email], card [REDACTED:payment_card], then [REDACTED:openai_key] '
                    'cut in the midd\ufffd')
    assert entry["blob_bytes"] == len(text.encode()) and entry["redactions"] == {"email": 1, "payment_card": 1,
                                                                                  "openai_key": 1}


def base_config(transform_table: dict[str, Any]) -> dict[str, Any]:
    return {"sources": {"agent": {"type": "tail", "paths": ["/x/*.log"], "tag": "ai"}},
            "outputs": {"search": {"type": "file", "path": "/y", "transforms": ["pii"]}},
            "transforms": {"pii": transform_table}}


def test_an_invalid_pattern_is_named_with_its_key() -> None:
    with pytest.raises(ConfigError, match=r"transforms\.pii\.patterns\.emp\.regex: .*invalid regular expression"):
        settings_from_dict(base_config({"type": "redact", "patterns": {"emp": {"regex": "EMP-("}}}))


def test_hash_mode_without_a_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"transforms\.pii: .*hash mode needs hash_key_file"):
        settings_from_dict(base_config({"type": "redact", "detectors": {"email": "hash"}}))


def test_an_unknown_detector_or_mode_is_named() -> None:
    with pytest.raises(ConfigError, match=r"transforms\.pii\.detectors\.emial: unknown key"):
        settings_from_dict(base_config({"type": "redact", "detectors": {"emial": "mask"}}))
    with pytest.raises(ConfigError, match=r"transforms\.pii\.detectors\.email: "):
        settings_from_dict(base_config({"type": "redact", "detectors": {"email": "blur"}}))


def test_a_missing_key_file_names_the_key(tmp_path: Path) -> None:
    config = RedactTransformConfig(type="redact", detectors={"email": "hash"}, hash_key_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"transforms\.pii\.hash_key_file: cannot read .*nope"):
        RedactTransform("pii", config)


def test_an_anchor_hyperscan_cannot_compile_names_the_patterns() -> None:
    config = RedactTransformConfig(type="redact", patterns={"x": {"regex": "x", "anchor": "(?<=a)x"}})
    with pytest.raises(ConfigError, match=r"transforms\.pii\.patterns: an anchor does not compile"):
        RedactTransform("pii", config)


def test_the_readme_example_transforms_validate_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Redaction and cost", 1)[1].split("\n## ", 1)[0]
    block = tomllib.loads(section.split("```toml\n", 1)[1].split("```", 1)[0])
    outputs = block["outputs"]
    assert outputs["search"]["transforms"] == ["pii", "cost"] and outputs["archive"]["transforms"] == []
    monkeypatch.setenv("LOGFERRY_TRANSFORMS__PII__HASH_KEY", "k")
    tables = block["transforms"]
    tables["pii"].pop("hash_key_file")
    settings = settings_from_dict({**base_config(tables["pii"]), "transforms": tables})
    pii = settings.transforms["pii"]
    assert isinstance(pii, RedactTransformConfig)
    (out,) = run(RedactTransform("pii", pii), {"input": f"{EMAIL} EMP-123456"})
    assert out["input"].startswith("[HMAC:email:") and out["input"].endswith(" [REDACTED:employee_id]")


def test_metrics_count_per_detector_without_the_text() -> None:
    t = transform()
    run(t, {"input": f"{EMAIL} {EMAIL} {CARD}"}, {"input": "nothing"})
    text = render(lambda: {"sources": {}, "outputs": {}, "healthy": True, "paused": False,
                           "transforms": {"pii": t.stats()}}).decode()
    assert 'logferry_transform_redactions_total{detector="email",transform="pii"} 2.0' in text
    assert 'logferry_transform_redactions_total{detector="payment_card",transform="pii"} 1.0' in text
    assert 'logferry_transform_records_redacted_total{transform="pii"} 1.0' in text
    assert EMAIL not in text and "4111" not in text


def test_typical_records_take_the_fast_path() -> None:
    # The prefilter must not flag what every record carries: ISO dates and times (ingested_at),
    # epoch seconds and milliseconds, UUIDs and request ids, host names, versions, token counts.
    # A line it flags is decoded and checked in Python: every line flagged is a 10x slower pipeline.
    lines = []
    for n, record in enumerate(generator.records(300, max_chars=4000)):
        record.update({"ingested_at": f"2026-0{n % 9 + 1}-1{n % 10}T1{n % 10}:5{n % 10}:00.{n:03d}Z",
                       "started": f"2026-01-0{n % 9 + 1} 10:30:0{n % 10}", "ms": 1_733_000_000_000 + n,
                       "uuid": str(uuid.UUID(int=n * 7919 + 1)), "hostname": f"agent-host-{n}",
                       "version": "3.11.7", "sdk": "openai 1.51.0", "offset": "+05:30"})
        lines.append(orjson.dumps(record) + b"\n")
    t = transform()
    records = [orjson.loads(line) for line in lines]
    assert t.prefilter.scan(*t.redactor.texts(records), len(records)) == {}
    assert t.apply(lines, records)[0] is lines


def test_logferry_check_names_a_missing_key_file(tmp_path: Path) -> None:
    config = tmp_path / "logferry.toml"
    config.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[sources.agent]
type = "tail"
paths = ["{tmp_path}/*.log"]
tag = "ai"
[outputs.search]
type = "file"
path = "{tmp_path}/out.jsonl"
transforms = ["pii"]
[transforms.pii]
type = "redact"
hash_key_file = "{tmp_path / 'missing.key'}"
[transforms.pii.detectors]
email = "hash"
""")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LOGFERRY_")}
    result = subprocess.run([sys.executable, "-m", "pipeline", "check", "-c", str(config)], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2], timeout=60, env=env)
    assert result.returncode != 0
    assert f"transforms.pii.hash_key_file: cannot read {tmp_path / 'missing.key'}" in result.stderr
