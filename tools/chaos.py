#!/usr/bin/env python3
"""Long fault-injection runs against the real daemon; regenerates docs/RELIABILITY.md.

  .venv/bin/python tools/chaos.py                 # every fault, full iteration counts
  .venv/bin/python tools/chaos.py --quick         # a few iterations each (a smoke run)
  .venv/bin/python tools/chaos.py --only kill9

Each scenario drives the real ``logferry run`` process with real writers and checks the
output against the writers' ledger of request_ids: lost, duplicated, corrupted (differs
from what was written apart from the added fields). The CI-sized versions of these runs
are the tests under tests/chaos/ and tests/integration/.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import generator  # noqa: E402
from tests.support.daemon import Daemon, Layout, Ledger, wait_for  # noqa: E402
from tests.support.writer import AgentWriter  # noqa: E402

ADDED = ("hostname", "ingested_at", "tag")
Scenario = Callable[[Path, random.Random, int], tuple[Layout, "dict[str, dict[str, Any]]"]]


@dataclass
class Result:
    """One fault's figures."""

    fault: str
    iterations: int = 0
    written: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0
    guarantee: str = ""
    note: str = ""

    def add(self, written: int, ledger: Ledger, corrupted: int) -> None:
        self.iterations += 1
        self.written += written
        self.lost += len(ledger.lost)
        self.duplicated += sum(n - 1 for n in ledger.duplicated.values())
        self.corrupted += corrupted


def corrupted(records: list[dict[str, Any]], originals: dict[str, dict[str, Any]]) -> int:
    """Records that differ from what was written, apart from the added fields."""
    bad = 0
    for record in records:
        body = {k: v for k, v in record.items() if k not in ADDED}
        original = originals.get(str(body.get("request_id")))
        if original is not None and body != original:
            bad += 1
    return bad


def originals_for(count: int, start: int = 0, max_chars: int = 400) -> dict[str, dict[str, Any]]:
    """The records a writer of ``count`` records from ``start`` wrote, by request_id."""
    return {r["request_id"]: r for r in generator.records(count, start=start, max_chars=max_chars)}


def fresh(root: Path, name: str) -> Layout:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return Layout(path)


Originals = dict[str, dict[str, Any]]


def kill9(root: Path, rng: random.Random, n: int) -> tuple[Layout, Originals]:
    """kill -9 at a random moment (reading, committing, flushing, delivering), restart; repeat."""
    layout = fresh(root, "kill9")
    layout.write_config(buffer={"chunk_limit_bytes": 256 * 1024, "flush_interval": 0.05})
    total = 4000 * n
    writer = AgentWriter(layout.logs / "agent.log", total, per_batch=50, pause=0.002)
    writer.start()
    for _ in range(n):
        daemon = Daemon(layout.config, layout.root / "daemon.log").start()
        time.sleep(rng.uniform(0.05, 1.0))  # the fault: a kill at a random instant
        daemon.kill()
    writer.join()
    finish(layout, total)
    return layout, originals_for(total)


def finish(layout: Layout, total: int, timeout: float = 120) -> None:
    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        wait_for(lambda: len(layout.records()) >= total, timeout=timeout, interval=0.2, what="catch-up")
        daemon.stop()


def logrotate(layout: Layout, options: str) -> None:
    conf = layout.root / "logrotate.conf"
    conf.write_text(f"{layout.logs}/agent.log {{\n  rotate 50\n  missingok\n  {options}\n}}\n")
    subprocess.run(["logrotate", "-f", "-s", str(layout.root / "logrotate.state"), str(conf)], check=True)


def rotation(options: str, reopen: bool) -> Scenario:
    def scenario(root: Path, rng: random.Random, n: int) -> tuple[Layout, Originals]:
        layout = fresh(root, "rotation")
        layout.write_config()
        total = 1000 * (n + 1)
        with Daemon(layout.config, layout.root / "daemon.log") as daemon:
            writer = AgentWriter(layout.logs / "agent.log", total, reopen=reopen, pause=0.001)
            writer.start()
            for i in range(n):
                wait_for(lambda i=i: writer.written >= 1000 * (i + 1) - rng.randrange(200), what="writer")
                logrotate(layout, options)
            writer.join()
            wait_for(lambda: settled(layout), timeout=60, interval=0.2, what="catch-up")
            daemon.stop()
        return layout, originals_for(total)

    return scenario


def settled(layout: Layout) -> bool:
    """The daemon has committed every byte of the live file and delivered everything."""
    positions = layout.state / "positions.json"
    live = layout.logs / "agent.log"
    if not positions.exists() or not live.exists():
        return False
    files = {f["path"]: f["offset"] for f in orjson.loads(positions.read_bytes())["files"]}
    buffered = list((layout.state / "buffer" / "debug").glob("*.staged")) + list(
        (layout.state / "buffer" / "debug").glob("*.queued"))
    return files.get(str(live)) == live.stat().st_size and not buffered


def deleted_while_open(root: Path, rng: random.Random, n: int) -> tuple[Layout, Originals]:
    """The file is deleted while the daemon has it open; a new file takes its name (often its inode)."""
    layout = fresh(root, "deleted")
    layout.write_config()
    per = 1000
    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        for i in range(n):
            path = layout.logs / "agent.log"
            generator.write(str(path), per, start=i * per, max_chars=400)
            wait_for(lambda i=i: daemon.log().count("following file") > i, what="the daemon to open it")
            time.sleep(rng.uniform(0.0, 0.05))  # the fault: deletion at a random point of reading
            path.unlink()
        wait_for(lambda: len(layout.records()) >= n * per, timeout=60, interval=0.2, what="catch-up")
        daemon.stop()
    originals: Originals = {}
    for i in range(n):
        originals.update(originals_for(per, start=i * per))
    return layout, originals


SCENARIOS: dict[str, tuple[Scenario, int, int, str, str]] = {
    # name: (scenario, iterations, records per iteration, guarantee, note)
    "kill9": (kill9, 50, 4000, "no loss, no duplicates", "kill -9 at a random instant, then restart"),
    "rotate-create": (rotation("create", True), 20, 1000, "no loss, no duplicates",
                      "logrotate create while writing, rotations 0-200 records apart"),
    "rotate-delaycompress": (rotation("create\n  compress\n  delaycompress", True), 20, 1000,
                             "no loss, no duplicates", "logrotate create + compress + delaycompress"),
    "rotate-copytruncate": (rotation("copytruncate", False), 20, 1000,
                            "no duplicates; lines written between copy and truncate can be lost (any reader)",
                            "logrotate copytruncate, writer keeps its descriptor"),
    "deleted-while-open": (deleted_while_open, 20, 1000, "no loss, no duplicates",
                           "file deleted while being read; a new file takes its name"),
}


def run(name: str, root: Path, rng: random.Random, iterations: int) -> Result:
    scenario, _, _, guarantee, note = SCENARIOS[name]
    started = time.monotonic()
    layout, originals = scenario(root, rng, iterations)
    records = layout.records()
    result = Result(name, guarantee=guarantee, note=note)
    result.add(len(originals), Ledger.compare(originals, records), corrupted(records, originals))
    result.iterations = iterations
    print(f"{name}: {asdict(result)} in {time.monotonic() - started:.0f}s", flush=True)
    return result


def write_table(results: list[Result], args: argparse.Namespace) -> None:
    rows = "\n".join(
        f"| {r.fault} | {r.note} | {r.iterations} | {r.written:,} | {r.lost} | {r.duplicated} | {r.corrupted} "
        f"| {r.guarantee} |" for r in results)
    text = (REPO / "docs" / "RELIABILITY.md").read_text()
    start, end = "<!-- chaos:begin -->", "<!-- chaos:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    table = (f"{start}\nRun {time.strftime('%Y-%m-%d')} with `{' '.join(['tools/chaos.py', *sys.argv[1:]])}` "
             f"(seed {args.seed}):\n\n| fault | how | iterations | records written | lost | duplicated | corrupted "
             f"| guarantee |\n|---|---|---|---|---|---|---|---|\n{rows}\n{end}")
    (REPO / "docs" / "RELIABILITY.md").write_text(head + table + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 iterations per fault")
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/RELIABILITY.md")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="logferry-chaos-"))
    results = [run(name, root, rng, 3 if args.quick else SCENARIOS[name][1]) for name in args.only or SCENARIOS]
    if not args.no_write:
        write_table(results, args)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
