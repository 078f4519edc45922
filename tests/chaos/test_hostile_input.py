"""Hostile input: garbage, huge lines, deep nesting, a sparse giant, a crowd of files, symlink loops."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Ledger, wait_for

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def hostile_lines(rng: random.Random) -> list[tuple[bytes, str]]:
    """(line, expected reason prefix); an empty prefix marks a line that is a valid record."""
    return [
        (bytes(rng.randrange(256) for _ in range(300)).replace(b"\n", b"."), "invalid"),
        (b'{"request_id": "bad-utf8", "input": "\xff\xfe\xfd"}', "invalid UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "invalid JSON"),  # deeper than any parser should recurse
        (b'{"request_id": "deep", "x": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "invalid JSON"),
        (b'{"request_id": "nan", "tokens": NaN}', "invalid JSON"),
        (b'{"request_id": "inf", "latency_ms": Infinity}', "invalid JSON"),
        (b"\x00" * 1000, "invalid JSON"),
        (b'{"request_id": "dup-keys", "model": "a", "model": "b"}', ""),  # valid JSON: kept as written
        (b"[1, 2, 3]", "not a JSON object"),
        (b"   ", "empty line"),
    ]


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) / 1024


def test_hostile_input_never_crashes_and_every_bad_line_is_dead_lettered(layout, daemon_factory):
    rng = random.Random(6)
    good = list(generator.lines(200, max_chars=300))
    hostile = hostile_lines(rng)
    huge = b'{"request_id": "huge", "input": "' + b"y" * (50 * MiB) + b'"}'
    body = b"".join(good[:100]) + b"".join(line + b"\n" for line, _ in hostile) + huge + b"\n" + b"".join(good[100:])
    (layout.logs / "agent.log").write_bytes(body)
    with (layout.logs / "sparse.log").open("wb") as sparse:  # 2 GiB of nothing, no newline
        sparse.truncate(2 * 1024 * MiB)
    (layout.logs / "loop.log").symlink_to(layout.logs / "loop.log")
    (layout.logs / "a.log").symlink_to(layout.logs / "b.log")
    (layout.logs / "b.log").symlink_to(layout.logs / "a.log")
    crowd = layout.logs / "crowd"
    crowd.mkdir()
    layout.write_config(source={"paths": [str(layout.logs / "*.log"), str(crowd / "**" / "*.log")]})
    (crowd / "sub").mkdir()
    (crowd / "sub" / "up").symlink_to(crowd)  # a directory loop under a ** glob
    (crowd / "sub" / "up2").symlink_to(crowd)
    for n in range(1000):  # a thousand files at once
        (crowd / f"f{n:04d}.log").write_bytes(orjson.dumps({"request_id": f"crowd-{n}"}) + b"\n")

    expected = [generator.request_id(1, n) for n in range(200)] + ["dup-keys"] + [f"crowd-{n}" for n in range(1000)]
    bad = [reason for _, reason in hostile if reason]
    with new_daemon(layout, daemon_factory) as daemon:
        assert daemon.proc is not None
        wait_for(lambda: len(layout.records()) >= len(expected) and len(layout.dead_letters()) >= len(bad) + 1,
                 timeout=120, what="records and dead letters")
        rss = peak_rss_mb(daemon.proc.pid)
        assert daemon.proc.poll() is None
        assert daemon.stop() == 0
    Ledger.compare(expected, layout.records()).assert_exact()
    dead = layout.dead_letters()
    reasons = sorted(d["reason"] for d in dead)
    for prefix in bad:
        assert any(r.startswith(prefix) for r in reasons), (prefix, reasons)
    (oversized,) = [d for d in dead if d["reason"].startswith("line longer")]
    assert oversized["length"] == len(huge) and os.path.getsize(oversized["blob"]) == 16 * MiB
    assert rss < 250, f"peak RSS {rss:.0f} MB"
