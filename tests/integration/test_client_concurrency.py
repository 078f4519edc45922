"""pipeline.client under real concurrency: threads, processes and Debian's logrotate on one file."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.client import InteractionLogger

pytestmark = pytest.mark.integration

RECORDS_PER_WRITER = 10_000
THREADS = 8
PROCESSES = 4
BIG = "x" * 10_000  # some lines far beyond PIPE_BUF (4096) must stay whole too
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


def write_records(logger: InteractionLogger, writer: str, barrier: Any) -> None:
    barrier.wait(60)  # all writers start together so that their writes really overlap
    for n in range(RECORDS_PER_WRITER):
        payload = BIG if n % 97 == 0 else f"answer {n} from {writer}"
        logger.log_interaction(f"question {n}", payload, "gpt-test", tokens=n, writer=writer, n=n)


def process_writer(path: str, index: int, barrier: Any) -> None:
    """Entry point of a spawned writer process: its own logger, hence its own file descriptor."""
    with InteractionLogger(path) as logger:
        write_records(logger, f"p{index}", barrier)
    sys.exit(1 if logger.errors else 0)


def test_threads_and_processes_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(THREADS + PROCESSES)
    processes = [ctx.Process(target=process_writer, args=(str(path), i, barrier)) for i in range(PROCESSES)]
    for process in processes:
        process.start()
    shared = InteractionLogger(path)  # the threads share one logger, as a service would
    threads = [
        threading.Thread(target=write_records, args=(shared, f"t{i}", barrier)) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    shared.close()
    assert shared.errors == 0

    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert len(lines) == (THREADS + PROCESSES) * RECORDS_PER_WRITER
    records = [orjson.loads(line) for line in lines]  # raises if any line was torn or interleaved
    seen = Counter((r["writer"], r["n"]) for r in records)
    writers = [f"t{i}" for i in range(THREADS)] + [f"p{i}" for i in range(PROCESSES)]
    assert seen == Counter((w, n) for w in writers for n in range(RECORDS_PER_WRITER))
    assert all(r["output"] == BIG for r in records if r["n"] % 97 == 0)
    assert len({r["request_id"] for r in records}) == len(records)


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


@pytest.mark.skipif(not Path(LOGROTATE).exists(), reason="logrotate is not installed")
def test_logrotate_create_mode_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{path} {{\n    create 0640\n    rotate 10\n    missingok\n    nocompress\n}}\n")
    conf.chmod(0o644)
    state = tmp_path / "logrotate.state"
    logger = InteractionLogger(path)
    stop = threading.Event()
    written = 0

    def writer() -> None:
        nonlocal written
        while not stop.is_set():
            logger.log_interaction(f"question {written}", "answer", "gpt-test", n=written)
            written += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for rotation in range(1, 4):
            wait_for(lambda: path.exists() and path.stat().st_size > 0)  # the writer (re)opened the path
            result = subprocess.run(
                [LOGROTATE, "-f", "-s", str(state), str(conf)], capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, result.stderr
            assert (tmp_path / f"agent.log.{rotation}").exists()
        wait_for(lambda: path.stat().st_size > 0)
    finally:
        stop.set()
        thread.join()
    logger.close()

    files = [path] + [tmp_path / f"agent.log.{i}" for i in range(1, 4)]
    assert all(f.stat().st_size > 0 for f in files), "every generation received records"
    records = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert logger.errors == 0
    assert len(records) == written
    assert sorted(r["n"] for r in records) == list(range(written))
    assert len({r["request_id"] for r in records}) == written
