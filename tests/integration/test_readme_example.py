"""The README's agent-hook example, run as written, is shipped end to end by the daemon.

The block is taken from README.md ("Writing records from the agent") at test time, so the
README cannot drift from what works. A prelude stands in for what the snippet assumes
from the agent around it: a ``prompt`` and an ``openai`` client (no network here). The
snippet logs to ``./var/log/ai-agent/agent.log``, so it runs in a directory whose
``var/log/ai-agent`` is what the daemon tails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import new_daemon
from tests.support.daemon import REPO, Daemon, Layout, wait_for

pytestmark = pytest.mark.integration

SECTION = "## Writing records from the agent"
PROMPT = "Summarise ticket 4711 in one line."
ANSWER = "The printer on floor 3 is out of toner."
# Stand-ins for the agent's own objects: an OpenAI-style client whose response has
# choices[0].message.content and usage (prompt/completion/total tokens), and the prompt.
PRELUDE = f"""\
from types import SimpleNamespace

prompt = {PROMPT!r}


def _create(model, messages):
    assert model == "gpt-4o" and messages == [{{"role": "user", "content": prompt}}]
    message = SimpleNamespace(content={ANSWER!r})
    usage = SimpleNamespace(prompt_tokens=9, completion_tokens=11, total_tokens=20)
    return SimpleNamespace(choices=[SimpleNamespace(message=message)], usage=usage)


openai = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=_create)))
"""


def readme_example() -> str:
    """The python block of the README's agent section."""
    section = (REPO / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, f"no python block under {SECTION!r} in README.md"
    return block.group(1)


def run_example(cwd: Path) -> subprocess.CompletedProcess[str]:
    """The prelude and the README block as one script, run as the agent would run it."""
    script = cwd / "agent.py"
    script.write_text(PRELUDE + "\n" + readme_example())
    env = {k: v for k, v in os.environ.items() if k != "LOGFERRY_AGENT_LOG"}  # the block's own path counts
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_readme_example_is_short() -> None:
    lines = [line for line in readme_example().splitlines() if line.strip()]
    assert len(lines) <= 10, "the README promises a 10-line example"


def test_the_readme_example_is_shipped_end_to_end(layout: Layout, daemon_factory: list[Daemon]) -> None:
    agent_dir = layout.root / "agent"
    tailed = agent_dir / "var" / "log" / "ai-agent"
    tailed.mkdir(parents=True)
    layout.write_config(source={"paths": [str(tailed / "*.log")]})
    with new_daemon(layout, daemon_factory) as daemon:
        result = run_example(agent_dir)
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        wait_for(lambda: len(layout.records()) >= 2, timeout=30, what="the example's 2 records")
        assert daemon.stop() == 0
    records = {r["input"]: r for r in layout.records()}
    assert len(layout.records()) == len(records) == 2
    assert len({r["request_id"] for r in records.values()}) == 2
    logged = records["What is 2+2?"]
    assert (logged["output"], logged["model"], logged["tokens"], logged["latency_ms"]) == ("4", "gpt-4o", 12, 350.0)
    timed = records[PROMPT]
    assert (timed["output"], timed["model"]) == (ANSWER, "gpt-4o")
    assert (timed["prompt_tokens"], timed["completion_tokens"], timed["tokens"]) == (9, 11, 20)
    assert timed["latency_ms"] > 0
    for record in records.values():
        assert record["user_id"] == "u-17" and record["type"] == "llm_interaction"
        assert isinstance(record["timestamp"], float) and record["hostname"] and record["tag"] == "ai.interactions"
    assert layout.dead_letters() == []
