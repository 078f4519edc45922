"""The parse worker's process: what it imports, its socket framing, its result area and its environment."""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import socket
import subprocess
import sys
import threading
import zlib
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import pytest

from pipeline.runtime import parse_worker
from pipeline.runtime.memory import ARENAS, MMAP_THRESHOLD, TRIM_THRESHOLD
from pipeline.runtime.parse_pool import PACKAGE_ROOT, worker_env
from pipeline.runtime.parse_worker import Channel, Done, Job, Region, ResultArea, Setup
from pipeline.transforms.cost.config import CostTransformConfig, Price
from pipeline.transforms.cost.transform import CostTransform
from pipeline.transforms.plan import SourceRoute, TransformPlan
from pipeline.transforms.redact.config import RedactTransformConfig
from pipeline.transforms.redact.transform import RedactTransform

# What a worker must not load: each is megabytes and milliseconds per worker, and none is needed to parse.
HEAVY = ("multiprocessing", "ctypes", "asyncio", "pydantic", "subprocess", "pipeline.config", "pipeline.runtime.memory",
         "pipeline.transforms.records", "pipeline.sources")


def test_a_worker_imports_only_the_hot_loop() -> None:
    # The way the pool starts it (-P, its environment), from another directory: this checkout's code, nothing heavy.
    probe = ("import sys, pipeline.runtime.parse_worker, pipeline; "
             "print(pipeline.__file__); print(*sorted(sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=worker_env(os.environ), cwd="/",
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == os.path.join(PACKAGE_ROOT, "pipeline", "__init__.py")
    loaded = set(out[1].split())
    assert "pipeline.transforms.lines" in loaded and "orjson" in loaded
    assert not [name for name in loaded if name.startswith(HEAVY)]


def test_a_worker_given_a_redact_plan_loads_its_engine_but_not_pydantic_nor_the_config(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k3y\n")
    redact = RedactTransform("pii", RedactTransformConfig(type="redact", hash_key_file=key_file))
    plan = TransformPlan({"pii": redact}, {"agent": SourceRoute((), {"search": (3600, ("pii",))})})
    key_file.unlink()  # the worker gets the key read at load time
    probe = ("import pickle, sys, pipeline.runtime.parse_worker; plan = pickle.loads(sys.stdin.buffer.read()); "
             "print(plan.transforms['pii'].redactor.key); print(*sorted(sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=worker_env(os.environ), cwd="/",
                         input=pickle.dumps(plan), capture_output=True, check=True).stdout.decode().splitlines()
    assert out[0] == "b'k3y'"
    loaded = set(out[1].split())
    assert "hyperscan" in loaded and "pipeline.transforms.redact.engine" in loaded
    assert not [name for name in loaded if name.startswith(HEAVY) and name != "subprocess"]
    assert "k3y" not in repr(redact.spec), "the key is never shown"


def test_a_worker_given_a_cost_plan_prices_records_without_pydantic_nor_the_config() -> None:
    price = Price(input=2.5, output=10.0)
    cost = CostTransform("cost", CostTransformConfig(type="cost", aliases={"gpt": ["gpt-4o*"]}, prices={"gpt": price}))
    plan = TransformPlan({"cost": cost}, {"agent": SourceRoute((), {"search": (3600, ("cost",))})})
    record = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}
    probe = ("import pickle, sys, orjson, pipeline.runtime.parse_worker; plan = pickle.loads(sys.stdin.buffer.read()); "
             f"record = {record!r}; cost = plan.transforms['cost']; "
             "print(cost.apply([orjson.dumps(record) + b'\\n'], [record])[0][0].decode().strip()); "
             "print(*sorted(sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=worker_env(os.environ), cwd="/",
                         input=pickle.dumps(plan), capture_output=True, check=True).stdout.decode().splitlines()
    assert orjson.loads(out[0]) == {**record, "model_name": "gpt", "cost_usd": 0.0035}
    assert orjson.loads(cost.apply([orjson.dumps(record) + b"\n"], [record])[0][0]) == orjson.loads(out[0])
    loaded = set(out[1].split())
    assert "pipeline.transforms.cost.transform" in loaded
    assert not [name for name in loaded if name.startswith(HEAVY)]


def test_the_channel_speaks_multiprocessing_connection_framing_both_ways() -> None:
    ours, theirs = socket.socketpair()
    daemon, worker = Connection(ours.detach()), Channel(theirs.detach())
    big = Done("ok", 3, 7, (Region(0, 10, 1, 99),), bad=((5, b"x" * 300_000, "not JSON"),))  # several reads
    try:
        sender = threading.Thread(target=daemon.send, args=(big,))  # larger than the socket's buffer
        sender.start()
        assert worker.recv() == big
        sender.join()
        got: list[object] = []
        receiver = threading.Thread(target=lambda: got.extend((daemon.recv(), daemon.recv())))
        receiver.start()
        worker.send(big)
        worker.send(None)
        receiver.join()
        assert got == [big, None]
    finally:
        daemon.close()
    with pytest.raises(EOFError):  # the daemon exited: the worker leaves
        worker.recv()
    with pytest.raises(ConnectionError):
        worker.send(big)
    os.close(worker.fd)


def test_a_worker_collects_garbage_between_jobs_never_during_one_even_after_a_failed_job(
        monkeypatch: pytest.MonkeyPatch) -> None:
    during: list[bool] = []

    def job_that_fails(memory: mmap.mmap, setup: Setup, job: Job) -> Done:
        during.append(gc.isenabled())
        raise ValueError("a bug in the job")

    monkeypatch.setattr(parse_worker, "run_job", job_that_fails)
    ours, theirs = socket.socketpair()
    daemon = Connection(ours.detach())
    for message in (Setup(4096, 2048, frozenset(), "time", ()), Job(0, 10, 0, b"", {}, 0.0),
                    Job(1, 10, 0, b"", {}, 0.0), None):
        daemon.send(message)
    try:
        with mmap.mmap(-1, 4096) as memory:
            parse_worker.serve(Channel(theirs.detach()), memory)
        answers = [daemon.recv(), daemon.recv()]
    finally:
        daemon.close()
        gc.unfreeze()  # serve froze this test process's heap, as it does a worker's
    assert during == [False, False]
    assert gc.isenabled()
    assert [(done.kind, done.slot, done.reason) for done in answers] == [("error", 0, "ValueError: a bug in the job"),
                                                                        ("error", 1, "ValueError: a bug in the job")]


def test_the_result_area_writes_records_then_offsets_with_their_crc() -> None:
    with mmap.mmap(-1, 4096) as memory:
        area = ResultArea(memory, 1000, 200)
        lines = [b'{"a":1}\n', b'{"b":"\xc3\xa9"}\n', b"\n"]
        assert area.add(lines, [0, 8, 20]) == 0
        assert area.add([b"x" * 7], [40]) == 1
        payload = b"".join(lines)
        assert area.regions[0] == Region(0, len(payload), 3, zlib.crc32(payload))
        assert memory[1000 : 1000 + len(payload)] == payload
        assert memory[1000 + len(payload) : 1000 + len(payload) + 24] == b"".join(
            n.to_bytes(8, sys.byteorder, signed=True) for n in (0, 8, 20))
        assert area.regions[1] == Region(len(payload) + 24, 7, 1, zlib.crc32(b"x" * 7))
        assert not area.full
        assert area.add([b"y" * 150], [50]) == -1  # 150 + 8 more would pass the area's end
        assert area.full
        assert memory[1000 + len(payload) + 24 + 15 : 1200] == bytes(200 - len(payload) - 24 - 15)


def test_the_worker_environment_carries_the_malloc_settings_unless_set() -> None:
    env = worker_env({"PATH": "/bin", "PYTHONPATH": "/elsewhere"})
    assert env["PYTHONPATH"] == os.pathsep.join([PACKAGE_ROOT, "/elsewhere"])
    assert (env["MALLOC_ARENA_MAX"], env["MALLOC_MMAP_THRESHOLD_"], env["MALLOC_TRIM_THRESHOLD_"]) == (
        str(ARENAS), str(MMAP_THRESHOLD), str(TRIM_THRESHOLD))
    assert env["PATH"] == "/bin"
    assert worker_env({"MALLOC_ARENA_MAX": "1"})["MALLOC_ARENA_MAX"] == "1"  # the operator's word wins
    assert worker_env({})["PYTHONPATH"] == PACKAGE_ROOT


def test_the_daemon_applies_the_malloc_settings_the_environment_leaves_unset() -> None:
    probe = "from pipeline.runtime.memory import tune_malloc; print(','.join(tune_malloc()))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    applied = subprocess.run([sys.executable, "-c", probe], env=clean, cwd=PACKAGE_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert applied == "MALLOC_ARENA_MAX,MALLOC_MMAP_THRESHOLD_,MALLOC_TRIM_THRESHOLD_"
    operator = subprocess.run([sys.executable, "-c", probe], env={**clean, "MALLOC_TRIM_THRESHOLD_": "131072"},
                              cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert operator == "MALLOC_ARENA_MAX,MALLOC_MMAP_THRESHOLD_"  # the operator's setting is left as it is
