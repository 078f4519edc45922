"""Unit tests of the agent-side logging hook, pipeline.client."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline
from pipeline import client
from pipeline.client import encoding
from pipeline.client import logger as logger_mod

PROJECT_ROOT = Path(pipeline.__file__).resolve().parents[1]


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "every record ends with a newline"
    return [json.loads(line) for line in data.splitlines()]


def strict_loads(line: bytes) -> Any:
    """json.loads that rejects NaN/Infinity, which orjson (the daemon's parser) rejects too."""

    def reject(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=reject)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "log" / "ai-agent" / "agent.log"


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Isolate the module-level default logger."""
    monkeypatch.setattr(logger_mod, "_default", None)
    yield
    if logger_mod._default is not None:
        logger_mod._default.close()


@pytest.fixture(params=["orjson", "stdlib"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each of the two encoders the logger may use."""
    func = encoding.encode_line_orjson if request.param == "orjson" else encoding.encode_line_stdlib
    monkeypatch.setattr(logger_mod, "encode_line", func)
    return str(request.param)


# -- record shape and the module-level API ------------------------------------------------------------


def test_record_has_the_shape_the_daemon_expects(log_path: Path) -> None:
    before = time.time()
    with client.InteractionLogger(log_path) as lg:
        rid = lg.log_interaction("What is 2+2?", "4", "gpt-4o", tokens=12, latency_ms=350, user="u-17")
        lg.log_interaction("q", "a", "claude", tokens={"usage": {"input_tokens": 5, "output_tokens": 7}})
        lg.log_interaction("q", "a", "m", request_id="given-id", prompt_tokens=2, completion_tokens=3)
    first, second, third = read_lines(log_path)
    assert first == {
        "type": "llm_interaction",
        "request_id": rid,
        "timestamp": first["timestamp"],
        "model": "gpt-4o",
        "input": "What is 2+2?",
        "output": "4",
        "tokens": 12,
        "latency_ms": 350.0,
        "user": "u-17",
    }
    assert uuid.UUID(hex=rid).version == 4 and len(rid) == 32
    assert isinstance(first["timestamp"], float) and before <= first["timestamp"] <= time.time()
    assert isinstance(first["latency_ms"], float)
    assert (second["prompt_tokens"], second["completion_tokens"], second["tokens"]) == (5, 7, 12)
    assert second["latency_ms"] is None and second["request_id"] != rid
    assert (third["request_id"], third["prompt_tokens"], third["completion_tokens"]) == ("given-id", 2, 3)
    assert third["tokens"] == 5


def test_timestamp_may_be_given_as_datetime(log_path: Path) -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    with client.InteractionLogger(log_path) as lg:
        lg.log_interaction("q", "a", "m", timestamp=when)
    assert read_lines(log_path)[0]["timestamp"] == when.timestamp()


def test_file_is_created_with_parents_and_mode_0640(log_path: Path) -> None:
    with client.InteractionLogger(log_path) as lg:
        lg.log_interaction("q", "a", "m")
    mode = stat.S_IMODE(log_path.stat().st_mode)
    assert mode & ~0o640 == 0, oct(mode)
    assert mode & 0o600 == 0o600


def test_module_level_log_interaction_uses_configure(log_path: Path, fresh_default: None) -> None:
    configured = client.configure(log_path)
    assert client.get_logger() is configured
    client.log_interaction("q", "a", "m", tokens=3)
    assert read_lines(log_path)[0]["tokens"] == 3


def test_default_logger_follows_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_default: None
) -> None:
    assert client.DEFAULT_PATH == "/var/log/ai-agent/agent.log"
    target = tmp_path / "from-env.log"
    monkeypatch.setenv("LOGFERRY_AGENT_LOG", str(target))
    rid = client.log_interaction("q", "a", "m")
    assert client.get_logger().path == str(target)
    assert read_lines(target)[0]["request_id"] == rid


def test_configure_replaces_and_closes_the_previous_default(tmp_path: Path, fresh_default: None) -> None:
    first = client.configure(tmp_path / "one.log")
    second = client.configure(tmp_path / "two.log")
    assert first.closed and not second.closed
    client.log_interaction("q", "a", "m")
    assert not (tmp_path / "one.log").exists()
    assert len(read_lines(tmp_path / "two.log")) == 1


# -- values JSON cannot encode -----------------------------------------------------------------------


class Custom:
    def __str__(self) -> str:
        return "custom!"


def test_unencodable_values_are_converted_not_raised(log_path: Path, encoder: str) -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with client.InteractionLogger(log_path) as lg:
        lg.log_interaction(
            {"when": when, 1: "int key", (1, 2): "tuple key", None: "none key"},
            b"caf\xc3\xa9 \xff",
            "m",
            obj=Custom(),
            day=dt.date(2024, 1, 2),
            price=Decimal("12.50"),
            nan_decimal=Decimal("NaN"),
            tags={"b", "a"},
            pair=(1, 2),
            ratio=float("nan"),
            huge=2**80,
            surrogate="a\ud800b",
        )
        assert lg.errors == 0
    (record,) = read_lines(log_path)
    assert record["input"] == {
        "when": "2024-01-02T03:04:05+00:00",
        "1": "int key",
        "[1, 2]": "tuple key",
        "null": "none key",
    }
    assert record["output"] == "café \ufffd"
    assert record["obj"] == "custom!"
    assert record["day"] == "2024-01-02"
    assert record["price"] == 12.5
    assert record["nan_decimal"] == "NaN"
    assert record["tags"] == ["a", "b"]
    assert record["pair"] == [1, 2]
    assert record["ratio"] is None
    assert record["huge"] == str(2**80)
    assert record["surrogate"] == "a?b"


def test_cycles_do_not_break_logging(log_path: Path, encoder: str) -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with client.InteractionLogger(log_path) as lg:
        lg.log_interaction(loop, "a", "m")
    assert read_lines(log_path)[0]["input"] == [1, "<circular>"]


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.sampled_from(["\ud800", "line\nbreak", "\u2028", "\x00"]),
    st.binary(),
    st.datetimes(),
    st.dates(),
    st.decimals(),
    st.uuids(),
    st.builds(Custom),
)
_keys = st.one_of(
    st.text(), st.integers(), st.booleans(), st.none(), st.tuples(st.integers()), st.datetimes()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(_keys, inner, max_size=4),
        st.frozensets(st.integers() | st.text(), max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(value=_values)
def test_any_value_encodes_to_exactly_one_strict_json_line(value: Any) -> None:
    record = client.build_record(value, value, "m", extra=value)
    for encode in (encoding.encode_line_orjson, encoding.encode_line_stdlib):
        line = encode(record)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        parsed = strict_loads(line)
        assert orjson.loads(line) == parsed
        assert parsed["type"] == "llm_interaction" and parsed["model"] == "m"


def test_to_jsonable_returns_plain_json_types() -> None:
    out = client.to_jsonable({"x": {1, 2}, "y": (Decimal("1.5"), float("inf")), 3: b"\x00"})
    assert out == {"x": [1, 2], "y": [1.5, None], "3": "\x00"}


def test_stdlib_fallback_when_orjson_is_missing(tmp_path: Path) -> None:
    code = (
        "import sys, datetime, decimal\n"
        "sys.modules['orjson'] = None  # makes 'import orjson' fail\n"
        "from pipeline import client\n"
        "assert not client.HAVE_ORJSON\n"
        "with client.InteractionLogger(sys.argv[1]) as lg:\n"
        "    lg.log_interaction('q', b'\\xff', 'm', when=datetime.date(2024, 1, 2), d=decimal.Decimal('2'),"
        " s={1}, k={(1,): 2}, nan=float('nan'))\n"
        "    assert lg.errors == 0\n"
    )
    target = tmp_path / "agent.log"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, env=env, timeout=60)
    line = target.read_bytes()
    record = strict_loads(line)
    assert record["output"] == "\ufffd" and record["when"] == "2024-01-02" and record["d"] == 2.0
    assert record["s"] == [1] and record["k"] == {"[1]": 2} and record["nan"] is None


def test_client_imports_only_stdlib_orjson_and_itself() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import pipeline.client\n"
        "new = set(sys.modules) - before\n"
        "print(sorted({m.split('.')[0] for m in new} - set(sys.stdlib_module_names)))\n"
        "print(sorted(m for m in new if m.startswith('pipeline.') and not m.startswith('pipeline.client')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    assert out == ["['orjson', 'pipeline']", "[]"]


# -- errors never propagate ------------------------------------------------------------------------


def test_unwritable_path_counts_errors_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    lg = client.InteractionLogger(directory)
    with caplog.at_level(logging.WARNING, logger="logferry.client"):
        rids = [lg.log_interaction("q", "a", "m") for _ in range(3)]
    assert lg.errors == 3
    assert isinstance(lg.last_error, IsADirectoryError)
    assert all(rids), "a request_id is returned even when the write fails"
    warnings = [r for r in caplog.records if r.name == "logferry.client"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert str(directory) in warnings[0].getMessage()
    lg.close()


def test_logging_after_close_is_counted_not_raised(log_path: Path) -> None:
    lg = client.InteractionLogger(log_path)
    lg.close()
    lg.log_interaction("q", "a", "m")
    assert lg.errors == 1 and isinstance(lg.last_error, ValueError)


def test_failing_stream_is_counted_not_raised() -> None:
    class Broken:
        def write(self, data: Any) -> int:
            raise OSError("disk on fire")

    lg = client.InteractionLogger(Broken())
    lg.log_interaction("q", "a", "m")
    lg.log_interaction("q", "a", "m")
    assert lg.errors == 2


def test_logger_recovers_when_the_path_becomes_writable(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    path.mkdir()
    with client.InteractionLogger(path) as lg:
        lg.log_interaction("lost", "a", "m")
        path.rmdir()
        lg.log_interaction("kept", "a", "m")
        assert lg.errors == 1
    assert [r["input"] for r in read_lines(path)] == ["kept"]


# -- rotation ------------------------------------------------------------------------------------------


def test_reopens_after_rename_and_after_delete(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    with client.InteractionLogger(path) as lg:
        lg.log_interaction(0, "a", "m")
        path.rename(tmp_path / "agent.log.1")
        lg.log_interaction(1, "a", "m")
        (tmp_path / "agent.log.1").rename(tmp_path / "agent.log.2")
        path.unlink()
        lg.log_interaction(2, "a", "m")
    assert [r["input"] for r in read_lines(tmp_path / "agent.log.2")] == [0]
    assert [r["input"] for r in read_lines(path)] == [2]
    assert not (tmp_path / "agent.log.1").exists(), "record 1 went to the recreated file, since deleted"


def test_stat_interval_defers_the_rotation_check(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    with client.InteractionLogger(path, stat_interval=3600) as lg:
        lg.log_interaction(0, "a", "m")
        path.rename(tmp_path / "agent.log.1")
        lg.log_interaction(1, "a", "m")
    assert [r["input"] for r in read_lines(tmp_path / "agent.log.1")] == [0, 1]
    assert not path.exists()


# -- streams -----------------------------------------------------------------------------------------


def test_text_and_binary_streams_receive_lines_and_stay_open() -> None:
    text, binary = io.StringIO(), io.BytesIO()
    for stream in (text, binary):
        with client.InteractionLogger(stream) as lg:
            lg.log_interaction("q", "a", "m")
            lg.log_interaction("q2", "a2", "m")
        assert not stream.closed
    text_lines = text.getvalue().splitlines()
    assert [json.loads(line)["input"] for line in text_lines] == ["q", "q2"]
    assert [json.loads(line)["input"] for line in binary.getvalue().splitlines()] == ["q", "q2"]


# -- usage_from --------------------------------------------------------------------------------------


def openai_response(as_dict: bool) -> Any:
    usage = {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}
    if as_dict:
        return {"id": "chatcmpl-1", "choices": [], "usage": usage}
    return SimpleNamespace(id="chatcmpl-1", choices=[], usage=SimpleNamespace(**usage))


def anthropic_response(as_dict: bool, cached: bool = False) -> Any:
    usage: dict[str, Any] = {"input_tokens": 10, "output_tokens": 5}
    if cached:
        usage |= {"cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000}
    if as_dict:
        return {"id": "msg_1", "content": [], "usage": usage}
    return SimpleNamespace(id="msg_1", content=[], usage=SimpleNamespace(**usage))


@pytest.mark.parametrize("as_dict", [False, True], ids=["object", "dict"])
def test_usage_from_openai(as_dict: bool) -> None:
    response = openai_response(as_dict)
    expected = {"prompt_tokens": 11, "completion_tokens": 22, "tokens": 33}
    assert client.usage_from(response) == expected
    usage = response["usage"] if as_dict else response.usage
    assert client.usage_from(usage) == expected


@pytest.mark.parametrize("as_dict", [False, True], ids=["object", "dict"])
def test_usage_from_anthropic(as_dict: bool) -> None:
    assert client.usage_from(anthropic_response(as_dict)) == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "tokens": 15,
    }
    assert client.usage_from(anthropic_response(as_dict, cached=True)) == {
        "prompt_tokens": 1110,
        "completion_tokens": 5,
        "tokens": 1115,
    }


def test_usage_from_gemini_and_unknowns() -> None:
    gemini = SimpleNamespace(
        usage_metadata=SimpleNamespace(prompt_token_count=4, candidates_token_count=6, total_token_count=12)
    )
    assert client.usage_from(gemini) == {"prompt_tokens": 4, "completion_tokens": 6, "tokens": 12}
    unknown = {"prompt_tokens": None, "completion_tokens": None, "tokens": None}
    assert client.usage_from(None) == unknown
    assert client.usage_from("a string") == unknown
    assert client.usage_from(mock.MagicMock()) == unknown
    assert client.usage_from({"usage": {"prompt_tokens": True, "completion_tokens": "3"}}) == unknown
    assert client.usage_from({"usage": {"completion_tokens": 3}}) == {
        "prompt_tokens": None,
        "completion_tokens": 3,
        "tokens": None,
    }


def test_a_response_can_be_passed_as_tokens(log_path: Path) -> None:
    with client.InteractionLogger(log_path) as lg:
        lg.log_interaction("q", "a", "gpt-4o", tokens=openai_response(as_dict=False))
    record = read_lines(log_path)[0]
    assert (record["prompt_tokens"], record["completion_tokens"], record["tokens"]) == (11, 22, 33)


# -- timed() -------------------------------------------------------------------------------------------


def busy() -> int:
    return sum(range(1000))


def test_timed_context_manager_logs_latency(log_path: Path) -> None:
    with client.InteractionLogger(log_path) as lg:
        with client.timed("gpt-4o", input="prompt", logger=lg, team="search") as t:
            busy()
            t.output = "answer"
            t.record_usage(openai_response(as_dict=True))
    (record,) = read_lines(log_path)
    assert t.latency_ms is not None and t.latency_ms > 0
    assert record["latency_ms"] == t.latency_ms and record["request_id"] == t.request_id
    assert (record["model"], record["input"], record["output"], record["team"]) == (
        "gpt-4o",
        "prompt",
        "answer",
        "search",
    )
    assert record["tokens"] == 33 and "error" not in record


def test_timed_logs_and_reraises_exceptions(log_path: Path) -> None:
    with client.InteractionLogger(log_path) as lg:
        with pytest.raises(TimeoutError), client.timed("gpt-4o", input="prompt", logger=lg):
            raise TimeoutError("upstream took too long")
    (record,) = read_lines(log_path)
    assert record["error"] == "TimeoutError: upstream took too long"
    assert record["output"] is None and record["latency_ms"] > 0


def test_timed_decorator_logs_each_call(log_path: Path) -> None:
    lg = client.InteractionLogger(log_path)

    @client.timed(logger=lg, team="qa")
    def ask(prompt: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
        busy()
        return {"text": prompt.upper(), "usage": {"input_tokens": 3, "output_tokens": 4}}

    assert ask("hi") == {"text": "HI", "usage": {"input_tokens": 3, "output_tokens": 4}}
    ask(prompt="yo", model="claude")
    lg.close()
    first, second = read_lines(log_path)
    assert (first["model"], first["input"], first["output"]["text"]) == ("gpt-4o-mini", "hi", "HI")
    assert (second["model"], second["input"]) == ("claude", "yo")
    assert first["tokens"] == 7 and first["team"] == "qa"
    assert first["latency_ms"] > 0 and second["latency_ms"] > 0
    assert ask.__name__ == "ask"


def test_bare_timed_decorator_uses_the_default_logger(log_path: Path, fresh_default: None) -> None:
    client.configure(log_path)

    @client.timed
    def summarise(text: str, limit: int) -> str:
        return text[:limit]

    assert summarise("abcdef", 3) == "abc"
    (record,) = read_lines(log_path)
    assert record["input"] == {"text": "abcdef", "limit": 3} and record["output"] == "abc"
    assert record["latency_ms"] > 0


@pytest.mark.asyncio
async def test_timed_decorates_async_functions(log_path: Path) -> None:
    async with client.AsyncInteractionLogger(log_path) as alog:

        @client.timed("gpt-4o", logger=alog)
        async def ask(prompt: str) -> str:
            await asyncio.sleep(0)
            return prompt[::-1]

        assert await ask("abc") == "cba"
        async with client.timed("gpt-4o", input="x", logger=alog) as t:
            t.output = "y"
    first, second = read_lines(log_path)
    assert (first["input"], first["output"]) == ("abc", "cba") and first["latency_ms"] > 0
    assert (second["input"], second["output"]) == ("x", "y") and second["latency_ms"] > 0


# -- async logger ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_logger_writes_lines_in_order(log_path: Path) -> None:
    async with client.AsyncInteractionLogger(log_path) as alog:
        rids = await asyncio.gather(*(alog.log_interaction(n, "a", "m") for n in range(50)))
        alog.submit(50, "a", "m")
    records = read_lines(log_path)
    assert [r["input"] for r in records] == list(range(51))
    assert [r["request_id"] for r in records[:50]] == rids
    assert alog.errors == 0


@pytest.mark.asyncio
async def test_async_logger_does_not_block_the_event_loop() -> None:
    entered, release = threading.Event(), threading.Event()
    writer_threads: list[int] = []
    lines: list[str] = []

    class SlowStream:
        def write(self, data: str) -> None:
            writer_threads.append(threading.get_ident())
            entered.set()
            assert release.wait(10)
            lines.append(data)

    async with client.AsyncInteractionLogger(SlowStream()) as alog:
        task = asyncio.create_task(alog.log_interaction("q", "a", "m"))
        deadline = time.monotonic() + 10
        while not entered.is_set():  # the loop keeps running while the write is in progress
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        assert not task.done()
        release.set()
        rid = await task
    assert writer_threads != [threading.get_ident()]
    assert json.loads(lines[0])["request_id"] == rid


@pytest.mark.asyncio
async def test_async_logger_after_close_counts_errors(log_path: Path) -> None:
    alog = client.AsyncInteractionLogger(log_path)
    await alog.aclose()
    assert await alog.log_interaction("q", "a", "m") == ""
    assert alog.errors == 1


# -- logging.Handler ---------------------------------------------------------------------------------


@pytest.fixture
def std_logger(log_path: Path) -> Iterator[logging.Logger]:
    handler = client.InteractionHandler(log_path)
    log = logging.getLogger(f"test_client.{uuid.uuid4().hex}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    yield log
    log.removeHandler(handler)
    handler.close()


def test_handler_turns_interaction_extra_into_a_line(std_logger: logging.Logger, log_path: Path) -> None:
    before = time.time()
    std_logger.info(
        "chat %s",
        "done",
        extra={"interaction": {"input": "q", "output": "a", "model": "gpt-4o", "team": "x"}},
    )
    std_logger.info("plain message, not an interaction")
    std_logger.info("llm", extra={"input": "q2", "output": "a2", "model": "claude", "tokens": 9})
    try:
        raise ValueError("bad gateway")
    except ValueError:
        std_logger.exception("llm failed", extra={"interaction": {"input": "q3", "model": "m"}})
    first, second, third = read_lines(log_path)
    assert (first["input"], first["output"], first["model"], first["team"]) == ("q", "a", "gpt-4o", "x")
    assert first["message"] == "chat done" and first["logger"] == std_logger.name
    assert before <= first["timestamp"] <= time.time()
    assert (second["input"], second["model"], second["tokens"]) == ("q2", "claude", 9)
    assert third["error"] == "ValueError: bad gateway" and third["output"] is None


def test_handler_defaults_to_the_module_logger(log_path: Path, fresh_default: None) -> None:
    client.configure(log_path)
    handler = client.InteractionHandler()
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "", None, None)
    record.interaction = {"input": "q", "output": "a", "model": "m"}
    handler.handle(record)
    handler.close()
    (line,) = read_lines(log_path)
    assert (line["input"], line["timestamp"], line["logger"]) == ("q", record.created, "svc")
