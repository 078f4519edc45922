#!/usr/bin/env python3
"""Long fault-injection runs against the real daemon; regenerates docs/RELIABILITY.md.

  .venv/bin/python tools/chaos.py                 # every fault, full iteration counts; rewrites the table
  .venv/bin/python tools/chaos.py --quick         # a few iterations each (a smoke run; prints only)
  .venv/bin/python tools/chaos.py --only kill9    # one fault (prints only; --write to renew its rows in the doc)

Each scenario drives the real ``logferry run`` process with real writers and checks every
output against the writers' ledger of request_ids: lost, duplicated, corrupted (differs
from what was written apart from the added fields). The destination outages and
kill9-all-outputs run against a throw-away Elasticsearch (tests/support/elasticsearch.py) and
moto_server (S3), started once for the run when a scenario needs them; sparse-10g also checks
the dead-letter store and the daemon's peak RSS. The CI-sized versions of these runs are the
tests under tests/chaos/ and tests/integration/.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import generator  # noqa: E402
from tests.support.daemon import Daemon, Layout, Ledger, render_toml, wait_for  # noqa: E402
from tests.support.elasticsearch import (  # noqa: E402
    DEFAULT_VERSION,
    ElasticsearchServer,
    all_documents,
    count_documents,
    request,
)
from tests.support.s3server import CREDENTIALS, S3Server, all_records  # noqa: E402
from tests.support.writer import AgentWriter, PacedWriter, lost_per_rotation  # noqa: E402

ADDED = ("hostname", "ingested_at", "tag")
Originals = dict[str, dict[str, Any]]
Delivered = dict[str, list[dict[str, Any]]]  # what each output holds at the end, by output kind
Scenario = Callable[[Path, random.Random, int], tuple[Originals, Delivered]]


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


def originals_in_parts(per: int, parts: int) -> dict[str, dict[str, Any]]:
    """The records of ``parts`` writers of ``per`` records each, the i-th starting at ``i * per``
    (a writer's records depend on its start: not the same as one writer of ``parts * per``)."""
    originals: dict[str, dict[str, Any]] = {}
    for i in range(parts):
        originals.update(originals_for(per, start=i * per))
    return originals


def fresh(root: Path, name: str) -> Layout:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return Layout(path)


def kill9(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """kill -9 at a random moment (reading, committing, flushing, delivering), restart; repeat."""
    return _kill9(fresh(root, "kill9"), rng, n, 0, 0)


def kill9_parse_workers(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """kill9 with ``parse_workers = 2`` over a backlog: blocks are in the workers' hands at the kill too."""
    return _kill9(fresh(root, "kill9-parse-workers"), rng, n, 2, 2000 * n)


def _kill9(layout: Layout, rng: random.Random, n: int, workers: int, backlog: int) -> tuple[Originals, Delivered]:
    layout.write_config(buffer={"chunk_limit_bytes": 256 * 1024, "flush_interval": 0.05}, parse_workers=workers)
    total = 4000 * n
    if backlog:
        generator.write(str(layout.logs / "agent.log"), backlog, max_chars=400)  # as the writer and originals_for
    writer = AgentWriter(layout.logs / "agent.log", total - backlog, start=backlog, per_batch=50, pause=0.002)
    writer.start()
    for _ in range(n):
        daemon = Daemon(layout.config, layout.root / "daemon.log").start()
        time.sleep(rng.uniform(0.05, 1.0))  # the fault: a kill at a random instant
        daemon.kill()
    writer.join()
    finish(layout, total)
    return {**originals_for(backlog), **originals_for(total - backlog, start=backlog)}, {"file": layout.records()}


def finish(layout: Layout, total: int, timeout: float = 120) -> None:
    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        wait_for(lambda: len(layout.records()) >= total, timeout=timeout, interval=0.2, what="catch-up")
        daemon.stop()


def logrotate(layout: Layout, options: str) -> None:
    conf = layout.root / "logrotate.conf"
    conf.write_text(f"{layout.logs}/agent.log {{\n  rotate 50\n  missingok\n  {options}\n}}\n")
    subprocess.run(["logrotate", "-f", "-s", str(layout.root / "logrotate.state"), str(conf)], check=True)


def rotation(options: str, reopen: bool) -> Scenario:
    def scenario(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
        layout = fresh(root, "rotation")
        layout.write_config()
        total = 1000 * (n + 1)
        with Daemon(layout.config, layout.root / "daemon.log") as daemon:
            writer = AgentWriter(layout.logs / "agent.log", total, reopen=reopen, pause=0.001)
            writer.start()
            for i in range(n):
                target = 1000 * (i + 1) - rng.randrange(200)
                wait_for(partial(lambda w, t: w.written >= t, writer, target), what="writer")
                logrotate(layout, options)
            writer.join()
            wait_for(lambda: settled(layout), timeout=60, interval=0.2, what="catch-up")
            daemon.stop()
        return originals_for(total), {"file": layout.records()}

    return scenario


COPYTRUNCATE_RATE = 5000  # lines/s, one write() each


def copytruncate(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """logrotate copytruncate every ~1,000 lines of a writer at 5,000 lines/s that keeps its O_APPEND descriptor.

    Lines written after logrotate's copy and before its truncate exist only in the original until
    the truncate: a reader that is caught up reads them there, a late one loses them. The row shows
    the losses per rotation.
    """
    layout = fresh(root, "copytruncate")
    layout.write_config()
    per = 1000
    total = per * (n + 1)
    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        writer = PacedWriter(layout.logs / "agent.log", total, COPYTRUNCATE_RATE)
        writer.start()
        for i in range(n):
            target = per * (i + 1) - rng.randrange(200)
            wait_for(partial(lambda w, t: w.written >= t, writer, target), interval=0.005, what="writer")
            logrotate(layout, "copytruncate")
            writer.mark()
        writer.join()
        wait_for(lambda: settled(layout), timeout=60, interval=0.2, what="catch-up")
        daemon.stop()
    records = layout.records()
    originals = originals_for(total)
    lost = sorted(int(i.split("-")[1]) for i in Ledger.compare(originals, records).lost)
    counts = lost_per_rotation(lost, writer.marks)
    MEASURED["rotate-copytruncate"] = (f"this run: lost per rotation at most {max(counts, default=0)}, "
                                       f"mean {sum(counts) / max(1, len(counts)):.1f}")
    return originals, {"file": records}


def settled(layout: Layout, outputs: tuple[str, ...] = ("debug",)) -> bool:
    """The daemon has committed every byte of the live file and ``outputs`` delivered everything."""
    live = layout.logs / "agent.log"
    if not live.exists() or layout.saved_offset(live) != live.stat().st_size:
        return False
    return not any(layout.buffered_chunks(output) for output in outputs)


def deleted_while_open(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """The file is deleted while the daemon has it open; a new file takes its name (often its inode)."""
    layout = fresh(root, "deleted")
    layout.write_config()
    per = 1000
    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        for i in range(n):
            path = layout.logs / "agent.log"
            generator.write(str(path), per, start=i * per, max_chars=400)
            wait_for(partial(lambda d, k: d.log().count("following file") > k, daemon, i), what="the daemon to open it")
            time.sleep(rng.uniform(0.0, 0.05))  # the fault: deletion at a random point of reading
            path.unlink()
        wait_for(lambda: len(layout.records()) >= n * per, timeout=60, interval=0.2, what="catch-up")
        daemon.stop()
    return originals_in_parts(per, n), {"file": layout.records()}


# -- hostile input ------------------------------------------------------------------------------

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MAX_LINE = 16 * MiB  # the tail source's default max_line_bytes
SPARSE_BYTES = 10 * GiB
RSS_BOUND_MB = 150
#: Figures a scenario measured, shown with its row(s): row name ("kill9-all-outputs (s3)") or scenario name.
MEASURED: dict[str, str] = {}


def sparse_lines() -> list[tuple[int, int]]:
    """(offset, length) of every line of the sparse file: NUL bytes (holes) cut by a newline at the end of
    each GiB, after three short lines at the limits: 1,000 bytes, exactly ``MAX_LINE`` (the longest line
    held whole) and ``MAX_LINE + 1`` (the shortest set aside); the last newline is the file's last byte."""
    lines, start = [], 0
    ends = [1000, 1000 + 1 + MAX_LINE, 1000 + 1 + MAX_LINE + 1 + MAX_LINE + 1]
    ends += [k * GiB - 1 for k in range(1, SPARSE_BYTES // GiB + 1)]
    for end in ends:
        lines.append((start, end - start))
        start = end + 1
    assert start == SPARSE_BYTES
    return lines


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def sparse_10g(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """A 10 GiB sparse file (holes read as NUL bytes, a newline at the end of each GiB) beside a live file
    that an agent keeps writing. The daemon must never die, its peak RSS stays under ``RSS_BOUND_MB``, each
    NUL line gets one dead-letter entry with its reason (over ``max_line_bytes``: offset + full length, its
    first ``max_line_bytes`` in a blob), and every real record arrives exactly once."""
    layout = fresh(root, "sparse-10g")
    layout.write_config()
    sparse, lines = layout.logs / "sparse.log", sparse_lines()
    with sparse.open("wb") as f:  # no data blocks but the newlines: a 10 GiB file costs ~40 KiB of disk
        f.truncate(SPARSE_BYTES)
        for start, length in lines:
            f.seek(start + length)
            f.write(b"\n")
    per = 10_000 * n
    writer = AgentWriter(layout.logs / "agent.log", per, per_batch=20, pause=0.02)  # ~1,000 records/s

    def sparse_entries() -> list[dict[str, Any]]:
        return [d for d in layout.dead_letters() if d["path"] == str(sparse)]

    with Daemon(layout.config, layout.root / "daemon.log") as daemon:
        proc = daemon.proc
        assert proc is not None
        started = time.monotonic()
        writer.start()

        def alive(done: Callable[[], bool]) -> Callable[[], bool]:
            def check() -> bool:  # a crash fails at once, not at the timeout
                assert proc.poll() is None, f"daemon exited with {proc.returncode}:\n{daemon.log()[-3000:]}"
                return done()
            return check

        wait_for(alive(lambda: len(sparse_entries()) >= len(lines)), timeout=600, interval=0.2,
                 what="the sparse file's dead letters")
        through = time.monotonic() - started
        writer.join()
        wait_for(alive(lambda: len(layout.records()) >= per and layout.saved_offset(sparse) == SPARSE_BYTES),
                 timeout=120, interval=0.2, what="catch-up")
        rss = peak_rss_mb(proc.pid)
        assert daemon.stop() == 0
    entries = {d["offset"]: d for d in sparse_entries()}
    assert len(entries) == len(sparse_entries()) == len(lines), "one dead-letter entry per line"
    for start, length in lines:
        entry = entries[start]
        assert entry["length"] == length, (start, length, entry)
        if length > MAX_LINE:
            assert entry["reason"].startswith("line longer than max_line_bytes"), entry
            assert entry["blob_bytes"] == Path(entry["blob"]).stat().st_size == MAX_LINE, entry
        else:
            assert entry["reason"].startswith("invalid JSON"), entry["reason"]
    assert rss < RSS_BOUND_MB, f"peak RSS {rss:.0f} MB"
    sparse.unlink()  # frees the ~10 GiB of zeroed page cache that reading the holes left behind
    MEASURED["sparse-10g"] = f"peak RSS {rss:.0f} MB; 10 GiB read in {through:.0f} s"
    print(f"sparse-10g: {len(lines)} NUL lines dead-lettered, 10 GiB in {through:.1f} s, peak RSS {rss:.1f} MB",
          flush=True)
    return originals_for(per), {"file": layout.records()}

# -- destination outages ------------------------------------------------------------------------

REQUEST_TIMEOUT = 2.0
DAEMON_ENV = {**CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
              "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
#: Quick flushes and retries; a chunk is never given up (every outage here ends).
RETRY = {"flush_interval": 0.2, "retry_wait": 0.2, "retry_max_interval": 1.0, "retry_limit": 100_000}
SMALL = {"chunk_limit_bytes": 32 * KiB, "total_limit_bytes": 256 * KiB, "overflow_action": "block"}


class Servers:
    """One throw-away Elasticsearch and one moto_server for the whole run, started on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._es: ElasticsearchServer | None = None
        self._s3: S3Server | None = None

    def es(self) -> ElasticsearchServer:
        if self._es is None:
            self._es = ElasticsearchServer(DEFAULT_VERSION).start()
        return self._es

    def s3(self) -> S3Server:
        if self._s3 is None:
            self._s3 = S3Server(self.root / "moto.log").start()
        return self._s3

    def close(self) -> None:
        if self._es is not None:
            self._es.stop()
        if self._s3 is not None:
            self._s3.stop()


SERVERS = Servers(Path(tempfile.gettempdir()))  # replaced in main()


def write_outputs(layout: Layout, outputs: dict[str, dict[str, Any]], **source: Any) -> None:
    """One tail source over ``layout.logs`` routed to every output in ``outputs``."""
    layout.config.write_text(render_toml({
        "state_dir": layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "enrich": {"tag_key": "tag"},
        "sources": {"agent": {"type": "tail", "paths": [str(layout.logs / "*.log")], "tag": "ai.interactions",
                              "rescan_interval": 0.5, **source}},
        "outputs": outputs,
    }))


def es_output(url: str, index: str, buffer: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "elasticsearch", "hosts": [url], "index": index, "request_timeout": REQUEST_TIMEOUT,
            "bulk_max_docs": 500, **extra, "buffer": {**RETRY, **(buffer or {})}}


def s3_output(url: str, bucket: str, buffer: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, "endpoint_url": url, "addressing_style": "path",
            "path": "interactions/%Y/%m/%d/", "connect_timeout": 1.0, "read_timeout": 1.0,
            "request_timeout": REQUEST_TIMEOUT, "max_attempts": 1, "buffer": {**RETRY, **(buffer or {})}}


def new_bucket(s3: S3Server, name: str) -> str:
    s3.client().create_bucket(Bucket=name)
    return name


def frozen(kind: str, root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """A destination frozen (SIGSTOP) for 2.5-8 s, longer than its 2 s request timeout, at a random
    moment of a stream of writes; n times in one run."""
    layout = fresh(root, f"{kind}-frozen")
    server: ElasticsearchServer | S3Server
    if kind == "elasticsearch":
        server = es = SERVERS.es()
        request("DELETE", f"{es.url}/frozen-*")
        output = es_output(es.url, "frozen-%Y.%m.%d", {"chunk_limit_bytes": 256 * KiB})
        count = partial(count_documents, es.url, "frozen-*")
    else:
        server = s3 = SERVERS.s3()
        bucket = new_bucket(s3, f"frozen-{rng.randrange(10**9)}")
        output = s3_output(s3.url, bucket, {"chunk_limit_bytes": 256 * KiB, "workers": 2})
        count = partial(lambda b: len(all_records(s3.client(), b)), bucket)
    write_outputs(layout, {kind: output})
    per, log = 2000, layout.logs / "agent.log"
    with Daemon(layout.config, layout.root / "daemon.log", DAEMON_ENV) as daemon:
        for i in range(n):
            writer = AgentWriter(log, per, start=i * per, per_batch=20, pause=0.01)
            writer.start()
            time.sleep(rng.uniform(0.0, 1.5))  # the fault at a random point of the stream
            server.freeze()
            try:
                time.sleep(rng.uniform(2.5, 8.0))  # the outage's length
            finally:
                server.thaw()
            writer.join()
        wait_for(lambda: count() >= n * per, timeout=180, interval=0.5, what="catch-up")
        daemon.stop()
    if kind == "elasticsearch":
        return originals_in_parts(per, n), {kind: all_documents(es.url, "frozen-*")}
    return originals_in_parts(per, n), {kind: all_records(s3.client(), bucket)}


def s3_restart(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """moto_server stopped (connections refused) for 1-5 s while records keep coming, then started on the
    same port; moto forgets its objects, so what it held is collected before each stop."""
    layout = fresh(root, "s3-restart")
    s3 = SERVERS.s3()
    bucket = new_bucket(s3, f"restart-{rng.randrange(10**9)}")
    write_outputs(layout, {"archive": s3_output(s3.url, bucket, {"chunk_limit_bytes": 128 * KiB})})
    per, log = 1000, layout.logs / "agent.log"
    held: list[dict[str, Any]] = []
    with Daemon(layout.config, layout.root / "daemon.log", DAEMON_ENV) as daemon:
        generator.write(str(log), per, max_chars=400)
        for i in range(1, n + 1):
            wait_for(lambda: settled(layout, ("archive",)), timeout=60, interval=0.2, what="delivery before the stop")
            held += all_records(s3.client(), bucket)
            s3.stop()
            writer = AgentWriter(log, per, start=i * per, per_batch=10, pause=0.005)
            writer.start()
            time.sleep(rng.uniform(1.0, 5.0))  # the outage's length
            writer.join()
            s3.start()
            new_bucket(s3, bucket)
        wait_for(lambda: settled(layout, ("archive",)), timeout=60, interval=0.2, what="catch-up")
        daemon.stop()
    return originals_in_parts(per, n + 1), {"s3": held + all_records(s3.client(), bucket)}


def both_down(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """Elasticsearch stopped and S3 frozen together while 1.8 MB arrive: both 256 KiB buffers fill, the
    source pauses (its position must not move), 1-5 s later both come back; n times. A file output on
    the same source is checked too."""
    layout = fresh(root, "both-down")
    es, s3 = SERVERS.es(), SERVERS.s3()
    request("DELETE", f"{es.url}/both-*")
    bucket = new_bucket(s3, f"both-{rng.randrange(10**9)}")
    outputs = ("search", "archive", "debug")
    write_outputs(layout, {
        "search": es_output(es.url, "both-%Y.%m.%d", SMALL), "archive": s3_output(s3.url, bucket, SMALL),
        "debug": {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"), "buffer": RETRY},
    }, read_bytes=16 * KiB)
    per, log = 2000, layout.logs / "agent.log"
    with Daemon(layout.config, layout.root / "daemon.log", DAEMON_ENV) as daemon:
        for i in range(n):
            if i:
                wait_for(lambda: settled(layout, outputs), timeout=120, interval=0.2, what="catch-up")
            es.stop_process()
            s3.freeze()
            try:
                mark = len(daemon.log())
                writer = AgentWriter(log, per, start=i * per, per_batch=20, pause=0.002)
                writer.start()
                wait_for(partial(lambda d, m: "sources paused" in d.log()[m:], daemon, mark), timeout=60,
                         what="the pause")
                writer.join()
                paused_at = layout.saved_offset(log)
                time.sleep(rng.uniform(1.0, 5.0))  # the outage goes on
                moved = layout.saved_offset(log) - paused_at
                assert moved == 0 and paused_at < log.stat().st_size, f"read {moved} bytes while paused"
            finally:
                s3.thaw()
                es.start_process()
        wait_for(lambda: settled(layout, outputs), timeout=120, interval=0.2, what="catch-up")
        daemon.stop()
    delivered = {"elasticsearch": all_documents(es.url, "both-*"), "s3": all_records(s3.client(), bucket),
                 "file": layout.records()}
    return originals_in_parts(per, n), delivered


def kill9_all_outputs(root: Path, rng: random.Random, n: int) -> tuple[Originals, Delivered]:
    """kill -9 at a random instant with one source routed to a file, Elasticsearch and S3 at once, then
    restart; n times. Records keep arriving throughout (about one kill cycle's worth per iteration), and
    small chunks flushed every 0.05 s keep bulk requests, uploads and appends in flight, so the kills land
    while reading, committing, flushing and delivering, in any output."""
    layout = fresh(root, "kill9-all-outputs")
    es, s3 = SERVERS.es(), SERVERS.s3()
    request("DELETE", f"{es.url}/kill9-*")
    bucket = new_bucket(s3, f"kill9-{rng.randrange(10**9)}")
    fast = {"chunk_limit_bytes": 32 * KiB, "flush_interval": 0.05}
    outputs = ("search", "archive", "debug")
    write_outputs(layout, {
        "search": es_output(es.url, "kill9-%Y.%m.%d", fast), "archive": s3_output(s3.url, bucket, fast),
        "debug": {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"), "buffer": {**RETRY, **fast}},
    }, read_bytes=16 * KiB)  # a frame is one read: small reads make small chunks even in a catch-up
    total = 2000 * n
    # ~1,000 records/s: the writing lasts about as long as the kill cycles (start + up to 1 s each).
    writer = AgentWriter(layout.logs / "agent.log", total, per_batch=20, pause=0.02)
    writer.start()
    for _ in range(n):
        daemon = Daemon(layout.config, layout.root / "daemon.log", DAEMON_ENV).start()
        time.sleep(rng.uniform(0.05, 1.0))  # the fault: a kill at a random instant
        daemon.kill()
    writer.join()
    with Daemon(layout.config, layout.root / "daemon.log", DAEMON_ENV) as daemon:
        wait_for(lambda: settled(layout, outputs), timeout=300, interval=0.5, what="catch-up")
        assert daemon.stop() == 0
    # Evidence that kills landed mid-delivery (a resend after a request timeout counts too).
    log = (layout.root / "daemon.log").read_text()
    puts = Counter(re.findall(rf'"PUT /{bucket}/(\S+) HTTP', s3.log()))  # moto logs each answered request
    rolled = sum(1 for frames in re.findall(r"output=debug .*rolled_back_frames=(\d+)", log) if int(frames))
    MEASURED.update({
        "kill9-all-outputs (elasticsearch)": f"this run: {log.count('already indexed')} chunks sent again, "
                                             "their indexed documents answered 409",
        "kill9-all-outputs (s3)": f"this run: {sum(n > 1 for n in puts.values())} objects stored but not yet "
                                  "acknowledged at a kill, uploaded again over themselves",
        "kill9-all-outputs (file)": f"this run: {log.count('cutting back interrupted delivery')} interrupted "
                                    f"appends cut back; {rolled} restarts rolled back uncommitted frames",
    })
    delivered = {"elasticsearch": all_documents(es.url, "kill9-*"), "s3": all_records(s3.client(), bucket),
                 "file": layout.records()}
    return originals_for(total), delivered


SCENARIOS: dict[str, tuple[Scenario, int, int, str, str]] = {
    # name: (scenario, iterations, records per iteration, guarantee, note)
    "kill9": (kill9, 50, 4000, "no loss, no duplicates", "kill -9 at a random instant, then restart"),
    "kill9-parse-workers": (kill9_parse_workers, 50, 4000, "no loss, no duplicates",
                            "kill9 with parse_workers = 2, half the records a backlog at the start"),
    "kill9-all-outputs": (kill9_all_outputs, 50, 2000, "no loss, no duplicates",
                          "kill -9 at a random instant, then restart; one source to file + Elasticsearch + S3, "
                          "32 KiB chunks flushed every 0.05 s, records arriving throughout"),
    "rotate-create": (rotation("create", True), 20, 1000, "no loss, no duplicates",
                      "logrotate create while writing, rotations 0-200 records apart"),
    "rotate-delaycompress": (rotation("create\n  compress\n  delaycompress", True), 20, 1000,
                             "no loss, no duplicates", "logrotate create + compress + delaycompress"),
    "rotate-copytruncate": (copytruncate, 20, 1000,
                            "no duplicates; at most 3 lines lost per rotation (those written between logrotate's "
                            "copy and its truncate, not read in time)",
                            f"logrotate copytruncate every ~1,000 lines, writer at {COPYTRUNCATE_RATE:,} lines/s "
                            "(one write each) keeps its O_APPEND descriptor"),
    "deleted-while-open": (deleted_while_open, 20, 1000, "no loss, no duplicates",
                           "file deleted while being read; a new file takes its name"),
    "sparse-10g": (sparse_10g, 1, 10_000,
                   f"never a crash, peak RSS under {RSS_BOUND_MB} MB; each NUL line in the dead-letter store with "
                   "its reason (the 11 over 16 MiB: offset + full length, first 16 MiB kept); real records "
                   "exactly once",
                   "a 10 GiB sparse file (NULs, a newline at each GiB's end: 13 lines, 10 of ~1 GiB) beside a file "
                   "being written"),
    "es-frozen": (partial(frozen, "elasticsearch"), 10, 2000, "no loss, no duplicates (resends answered 409)",
                  "Elasticsearch SIGSTOPped 2.5-8 s (request_timeout 2 s) mid-stream, then SIGCONT"),
    "s3-frozen": (partial(frozen, "s3"), 10, 2000, "no loss, no duplicates (a resent chunk overwrites its object)",
                  "S3 (moto) SIGSTOPped 2.5-8 s (request_timeout 2 s) mid-stream, then SIGCONT"),
    "s3-restart": (s3_restart, 10, 1000, "no loss, no duplicates",
                   "S3 (moto) stopped 1-5 s (connections refused) while writing, restarted on the same port"),
    "both-down": (both_down, 10, 2000, "sources paused, position still; no loss, no duplicates in any output",
                  "Elasticsearch stopped + S3 frozen until both 256 KiB buffers are full, 1-5 s more, back"),
}


def run(name: str, root: Path, rng: random.Random, iterations: int) -> list[Result]:
    """One fault's figures, a row per output when the scenario has several."""
    scenario, _, _, guarantee, note = SCENARIOS[name]
    started = time.monotonic()
    originals, delivered = scenario(root, rng, iterations)
    results = []
    for output, records in delivered.items():
        fault = name if len(delivered) == 1 else f"{name} ({output})"
        measured = MEASURED.get(fault) or MEASURED.get(name)
        result = Result(fault, guarantee=f"{guarantee} ({measured})" if measured else guarantee, note=note)
        result.add(len(originals), Ledger.compare(originals, records), corrupted(records, originals))
        result.iterations = iterations
        print(f"{result.fault}: {asdict(result)} in {time.monotonic() - started:.0f}s", flush=True)
        results.append(result)
    return results


TABLE_HEAD = ("| fault | how | iterations | records written | lost | duplicated | corrupted | guarantee | run |\n"
              "|---|---|---|---|---|---|---|---|---|")


def write_table(results: list[Result], args: argparse.Namespace) -> None:
    """Put ``results``' rows in docs/RELIABILITY.md's table; the rows of faults not run now stay as they were.

    Each row says which run measured it (date, commit, command), so the table can be renewed a fault at a
    time (a full run takes about an hour on the 2-core VM) without passing old figures off as new ones.
    """
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown commit"
    run = f"{time.strftime('%Y-%m-%d')}, {commit}, `{' '.join(['tools/chaos.py', *sys.argv[1:]])}` (seed {args.seed})"
    doc = REPO / "docs" / "RELIABILITY.md"
    text = doc.read_text()
    start, end = "<!-- chaos:begin -->", "<!-- chaos:end -->"
    head, _, rest = text.partition(start)
    old, _, tail = rest.partition(end)
    # A full run renews every row (and drops those of faults gone); --only keeps the others'.
    kept = old.splitlines() if args.only else []
    rows = {line.split(" | ", 1)[0].removeprefix("| "): line for line in kept
            if line.startswith("| ") and not line.startswith(("| fault |", "|---"))}
    for r in results:
        rows[r.fault] = (f"| {r.fault} | {r.note} | {r.iterations} | {r.written:,} | {r.lost} | {r.duplicated} "
                         f"| {r.corrupted} | {r.guarantee} | {run} |")
    order, placed = list(SCENARIOS), list(rows)  # a fault's rows keep their order (the doc's, then this run's)

    def rank(fault: str) -> tuple[int, int]:
        scenario = fault.split(" (")[0]  # "kill9-all-outputs (s3)": one scenario's row per output
        return order.index(scenario) if scenario in order else len(order), placed.index(fault)

    ranked = sorted(rows, key=rank)
    table = (f"{start}\nEach row is one fault's run with `tools/chaos.py`; the last column says which run "
             f"(date, commit, command).\n\n{TABLE_HEAD}\n" + "\n".join(rows[f] for f in ranked) + f"\n{end}")
    doc.write_text(head + table + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 iterations per fault")
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/RELIABILITY.md")
    ap.add_argument("--write", action="store_true", help="update docs/RELIABILITY.md after --only/--quick too")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="logferry-chaos-"))
    global SERVERS
    SERVERS = Servers(root)
    try:
        results = [row for name in args.only or SCENARIOS
                   for row in run(name, root, rng, 3 if args.quick else SCENARIOS[name][1])]
    finally:
        SERVERS.close()
    # A partial run's rows replace those faults' rows only, and a quick run's figures are not the doc's: when asked.
    if not args.no_write and (args.write or not (args.quick or args.only)):
        write_table(results, args)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
