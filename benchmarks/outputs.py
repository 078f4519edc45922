#!/usr/bin/env python3
"""Outputs end to end: backlog → tail → Elasticsearch, → OpenSearch, and → S3 (gzip, zstd).

  .venv/bin/python benchmarks/outputs.py                          # 20,000 records, ES 8.19.21, OpenSearch and moto
  .venv/bin/python benchmarks/outputs.py --records 50000 --only es --es-url http://127.0.0.1:9200
  .venv/bin/python benchmarks/outputs.py --records 100000 --only os --workers 2   # OpenSearch 2.19.2
  .venv/bin/python benchmarks/outputs.py --only s3 --formats json,gzip,zstd

One generated workload (--records, --max-chars) already in the followed file, a fresh daemon
per run, timed from "logferry running" until the file is read to its end and the output's
buffer is empty (every chunk acknowledged by the server).

Elasticsearch and OpenSearch: a throw-away local server (tests/support/elasticsearch.py and
opensearch.py: the cached Maven test distributions, 512 MB heap) unless --es-url / --os-url.
Reports documents/s, logferry's CPU seconds
and share of one core, the server's CPU (its whole process group, from /proc) over the same
window, and next to it "direct _bulk": the same documents sent straight to the server in
bulk requests of the output's default size (5,000 documents, 10 MiB), one at a time (the output's
default bulk_concurrency), from prebuilt bodies, i.e. what the server alone accepts here. When
logferry's rate is close to the direct rate and its CPU share well under a core, the server
is the bottleneck, not logferry.

S3: a local moto_server (tests/support/s3server.py). For each store_as: MB/s of raw input,
objects/s, and compression ratio = raw bytes of the objects' content / stored bytes (object
sizes from the listing); every record is counted back from the objects.

The floor (floor.py) over the same workload is printed for reference. Prints tables and
writes benchmarks/results/outputs.json.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import zstandard
from common import (
    DaemonProcess,
    cpu_seconds,
    delivered_all,
    finish_run,
    group_cpu_seconds,
    machine,
    make_workload,
    peak_rss,
    positions,
    print_header,
    print_table,
    resident,
    run_floor,
    write_results,
)

from pipeline.outputs.elasticsearch.config import template_name_for
from pipeline.outputs.elasticsearch.template import interaction_mappings
from tests.support.daemon import render_toml
from tests.support.elasticsearch import ElasticsearchServer, SearchServer, request
from tests.support.opensearch import DEFAULT_VERSION as OS_VERSION
from tests.support.opensearch import OpenSearchServer
from tests.support.s3server import CREDENTIALS, S3Server

ES_VERSION = "8.19.21"
LOGFERRY_INDEX = "bench-logferry-%Y.%m.%d"
NDJSON = {"Content-Type": "application/x-ndjson"}
DAEMON_ENV = {**CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
              "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def write_config(root: Path, workload: Path, name: str, output: dict[str, Any], buffer: dict[str, Any]) -> Path:
    """tail ``workload`` → one output ``name``; production defaults except the buffer keys given."""
    config = root / "logferry.toml"
    config.write_text(render_toml({
        "state_dir": root / "state", "health": {"listen": "127.0.0.1:0"}, "enrich": {"tag_key": "tag"},
        "sources": {"agent": {"type": "tail", "paths": [str(workload)], "tag": "ai.interactions"}},
        "outputs": {name: {**output, "buffer": {"flush_interval": 1.0, **buffer}}},
    }))
    return config


def run_pipeline(root: Path, workload: Path, name: str, output: dict[str, Any], server_cpu: Callable[[], float],
                 env: dict[str, str] | None = None, workers: int = 1,
                 buffer: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fresh daemon over the backlog until every chunk is delivered: seconds, CPU of both sides, peak RSS.

    ``buffer``: more of the output's buffer settings."""
    shutil.rmtree(root / "state", ignore_errors=True)
    config = write_config(root, workload, name, output,
                          {"total_limit_bytes": 1 << 30, "workers": workers, **(buffer or {})})
    sizes = {str(workload): workload.stat().st_size}
    with DaemonProcess(config, root / f"daemon-{name}.log", env=env) as daemon:
        cpu0, server0 = cpu_seconds(daemon.pid), server_cpu()
        rss_ready = resident(daemon.pid)
        deadline, read = time.monotonic() + 600, 0.0
        while not delivered_all(root / "state", name, sizes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"not delivered after 600 s:\n{daemon.log()[-3000:]}")
            if not read and positions(root / "state").get(str(workload), 0) >= sizes[str(workload)]:
                read = time.perf_counter() - daemon.ready
            time.sleep(0.02)
        done = time.perf_counter()
        cpu1, server1 = cpu_seconds(daemon.pid), server_cpu()
        rss = peak_rss(daemon.pid)
        seconds = done - daemon.ready
    return {"seconds": seconds, "read_s": read or seconds, "cpu_s": cpu1 - cpu0,
            "cpu_pct_of_core": 100 * (cpu1 - cpu0) / seconds,
            "server_cpu_s": server1 - server0, "server_cpu_pct_of_core": 100 * (server1 - server0) / seconds,
            "peak_rss_mb": rss / 1e6, "rss_at_start_mb": rss_ready / 1e6}


# --------------------------------------------------------------------------------------------
# Elasticsearch


#: The bulk outputs measured: report key, output type, title, the local server and its version.
SEARCH_SERVERS: dict[str, tuple[str, str, str, type[SearchServer], str]] = {
    "es": ("elasticsearch", "elasticsearch", "Elasticsearch", ElasticsearchServer, ES_VERSION),
    "os": ("opensearch", "opensearch", "OpenSearch", OpenSearchServer, OS_VERSION),
}


@contextmanager
def search_server(kind: str, url: str | None) -> Iterator[tuple[str, Callable[[], float]]]:
    """The cluster's URL and a function giving its CPU seconds (NaN for an external cluster)."""
    if url:
        yield url, lambda: float("nan")  # another machine's processes: not measured
        return
    *_, server_class, version = SEARCH_SERVERS[kind]
    with server_class(version) as server:
        pgid = server.pid
        assert pgid is not None
        yield server.url, lambda: group_cpu_seconds(pgid)


def call(method: str, url: str, body: Any = None, ok: tuple[int, ...] = (200,),
         headers: dict[str, str] | None = None) -> Any:
    status, answer = request(method, url, body, headers=headers, timeout=300)
    assert status in ok, f"{method} {url}: HTTP {status} {str(answer)[:500]}"
    return answer


def count(url: str, pattern: str) -> int:
    call("POST", f"{url}/{pattern}/_refresh")
    return int(call("GET", f"{url}/{pattern}/_count")["count"])


def bulk_bodies(workload: Path, index: str, max_docs: int = 5000, max_bytes: int = 10 << 20) -> list[bytes]:
    """The workload as _bulk bodies (create, request_id as _id), enriched like the daemon does, cut at the
    output's default bulk_max_docs / bulk_max_bytes."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()).encode()
    extra = b',"hostname":"bench","ingested_at":"' + now + b'","tag":"ai.interactions"}\n'
    bodies: list[bytes] = []
    part: list[bytes] = []
    size = 0
    with workload.open("rb") as f:
        for line in f:
            rid = orjson.loads(line)["request_id"]
            item = b'{"create":{"_index":"%s","_id":"%s"}}\n' % (index.encode(), rid.encode())
            item += line.rstrip(b"\n")[:-1] + extra
            if part and (len(part) == max_docs or size + len(item) > max_bytes):
                bodies.append(b"".join(part))
                part, size = [], 0
            part.append(item)
            size += len(item)
    if part:
        bodies.append(b"".join(part))
    return bodies


def direct_bulk(url: str, workload: Path, index: str, server_cpu: Callable[[], float]) -> dict[str, Any]:
    """The same documents straight into a fresh index with the daemon's mapping, one request at a time."""
    call("DELETE", f"{url}/{index}", ok=(200, 404))
    call("PUT", f"{url}/{index}", {"mappings": interaction_mappings()})
    bodies = bulk_bodies(workload, index)
    server0, start = server_cpu(), time.perf_counter()
    for body in bodies:
        answer = call("POST", f"{url}/_bulk", body, headers=NDJSON)
        assert not answer["errors"], str(answer)[:500]
    seconds = time.perf_counter() - start
    server = server_cpu() - server0
    return {"seconds": seconds, "requests": len(bodies), "server_cpu_s": server,
            "server_cpu_pct_of_core": 100 * server / seconds}


def bench_search(kind: str, root: Path, workload: Path, args: argparse.Namespace) -> dict[str, Any]:
    """logferry's bulk output against a plain client on the same server, alternating runs."""
    records, size = args.records, workload.stat().st_size
    _, output_type, _, _, version = SEARCH_SERVERS[kind]
    external = args.es_url if kind == "es" else args.os_url
    with search_server(kind, external) as (url, server_cpu):
        direct_bulk(url, workload, "bench-warmup", server_cpu)  # the server's JIT and caches: not measured
        call("DELETE", f"{url}/bench-warmup")
        runs = []
        for n in range(args.es_runs):
            call("DELETE", f"{url}/bench-logferry-*", ok=(200, 404))
            output = {"type": output_type, "hosts": [url], "index": LOGFERRY_INDEX,
                      "bulk_concurrency": args.bulk_concurrency}
            run = run_pipeline(root, workload, "search", output, server_cpu, workers=args.workers)
            run["indexed"] = count(url, "bench-logferry-*")
            assert run["indexed"] == records, f"indexed {run['indexed']} of {records}"
            direct = direct_bulk(url, workload, f"bench-direct-{n}", server_cpu)
            direct["indexed"] = count(url, f"bench-direct-{n}")
            call("DELETE", f"{url}/bench-direct-{n}")
            runs.append({"logferry": run, "direct_bulk": direct})
        call("DELETE", f"{url}/bench-logferry-*", ok=(200, 404))
        call("DELETE", f"{url}/_index_template/{template_name_for(LOGFERRY_INDEX)}", ok=(200, 404))
    lf = statistics.median(r["logferry"]["seconds"] for r in runs)
    direct = statistics.median(r["direct_bulk"]["seconds"] for r in runs)
    return {"server": external or f"local {version} (512 MB heap)", "records": records, "bytes": size,
            "docs_per_s": records / lf, "mb_per_s": size / lf / 1e6, "direct_docs_per_s": records / direct,
            "ratio_to_direct": direct / lf,
            "cpu_pct_of_core": statistics.median(r["logferry"]["cpu_pct_of_core"] for r in runs),
            "server_cpu_pct_of_core": statistics.median(r["logferry"]["server_cpu_pct_of_core"] for r in runs),
            "runs": runs, "peak_rss_mb": max(r["logferry"]["peak_rss_mb"] for r in runs)}


# --------------------------------------------------------------------------------------------
# S3


def decompress(key: str, data: bytes) -> bytes:
    if key.endswith(".gz"):
        return gzip.decompress(data)
    if key.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def bench_s3(root: Path, workload: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    size, results = workload.stat().st_size, []
    with S3Server(root / "moto.log") as s3:
        client = s3.client()
        assert s3.proc is not None
        moto_pid = s3.proc.pid
        for fmt in args.formats.split(","):
            bucket = f"bench-{fmt}"
            client.create_bucket(Bucket=bucket)
            output = {"type": "s3", "bucket": bucket, "endpoint_url": s3.url, "addressing_style": "path",
                      "path": "interactions/%Y/%m/%d/", "store_as": fmt}
            run = run_pipeline(root, workload, "archive", output, lambda: cpu_seconds(moto_pid), env=DAEMON_ENV,
                               workers=args.workers)
            stored = raw = lines = objects = 0
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    objects += 1
                    stored += item["Size"]
                    content = decompress(item["Key"], client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
                    raw += len(content)
                    lines += content.count(b"\n")
            assert lines == args.records, f"{fmt}: {lines} records in S3, expected {args.records}"
            results.append({"store_as": fmt, **run, "objects": objects, "stored_bytes": stored, "raw_bytes": raw,
                            "records": lines, "input_bytes": size, "mb_per_s_raw": size / run["seconds"] / 1e6,
                            "objects_per_s": objects / run["seconds"], "records_per_s": lines / run["seconds"],
                            "compression_ratio": raw / stored})
    return results


# --------------------------------------------------------------------------------------------


def print_results(report: dict[str, Any]) -> None:
    floor = report["floor"]
    print(f"  workload: {report['records']:,} records, {report['bytes'] / 1e6:.1f} MB; floor (no output, no "
          f"durability): {floor['records_per_s']:,.0f} rec/s, {floor['mb_per_s']:.0f} MB/s")
    for key, _, title, _, _ in SEARCH_SERVERS.values():
        if key in report:
            print_search(report, report[key], title)
    print_s3(report)


def print_search(report: dict[str, Any], es: dict[str, Any], title: str) -> None:
    """One bulk output's table: each run of logferry beside the plain client's."""
    short = "ES" if title == "Elasticsearch" else "OS"
    print(f"\n  tail → {title} ({es['server']}), {len(es['runs'])} alternating runs, "
          f"workers {report['workers']}, bulk_concurrency {report['bulk_concurrency']}")
    rows = []
    for r in es["runs"]:
        lf, d = r["logferry"], r["direct_bulk"]
        rows.append(["logferry", f"{es['records'] / lf['seconds']:,.0f}", f"{lf['seconds']:.2f}",
                     f"{lf['cpu_s']:.2f}", f"{lf['cpu_pct_of_core']:.0f}%", f"{lf['server_cpu_s']:.2f}",
                     f"{lf['server_cpu_pct_of_core']:.0f}%",
                     f"{lf['rss_at_start_mb']:.0f} → {lf['peak_rss_mb']:.0f} MB"])
        rows.append(["direct _bulk", f"{es['records'] / d['seconds']:,.0f}", f"{d['seconds']:.2f}", "-", "-",
                     f"{d['server_cpu_s']:.2f}", f"{d['server_cpu_pct_of_core']:.0f}%", "-"])
    print_table(["", "docs/s", "seconds", "logferry CPU-s", "logferry CPU", f"{short} CPU-s", f"{short} CPU",
                 "RSS start → peak"], rows)
    print(f"  medians: logferry {es['docs_per_s']:,.0f} docs/s ({es['cpu_pct_of_core']:.0f}% of a core, {short} "
          f"{es['server_cpu_pct_of_core']:.0f}%), direct _bulk {es['direct_docs_per_s']:,.0f} docs/s; "
          f"logferry / direct: {es['ratio_to_direct']:.2f}x; peak RSS {es['peak_rss_mb']:.0f} MB")


def print_s3(report: dict[str, Any]) -> None:
    """The S3 table."""
    if "s3" in report:
        print("\n  tail → S3 (moto_server)")
        print_table(["store_as", "MB/s raw", "rec/s", "objects", "objects/s", "ratio", "seconds", "logferry CPU-s",
                     "logferry CPU", "moto CPU-s", "RSS start → peak"],
                    [[r["store_as"], f"{r['mb_per_s_raw']:.1f}", f"{r['records_per_s']:,.0f}", r["objects"],
                      f"{r['objects_per_s']:.1f}", f"{r['compression_ratio']:.2f}", f"{r['seconds']:.2f}",
                      f"{r['cpu_s']:.2f}", f"{r['cpu_pct_of_core']:.0f}%", f"{r['server_cpu_s']:.2f}",
                      f"{r['rss_at_start_mb']:.0f} → {r['peak_rss_mb']:.0f} MB"] for r in report["s3"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--max-chars", type=int, default=16384)
    ap.add_argument("--only", choices=["es", "os", "s3"], default=None)
    ap.add_argument("--es-url", default=None, help="an existing cluster instead of a throw-away local one")
    ap.add_argument("--os-url", default=None, help="an existing OpenSearch instead of a throw-away local one")
    ap.add_argument("--es-runs", type=int, default=3, help="alternating runs per bulk output (ES and OpenSearch)")
    ap.add_argument("--workers", type=int, default=1, help="buffer.workers of the output (chunks in flight)")
    ap.add_argument("--bulk-concurrency", type=int, default=1, help="the Elasticsearch output's bulk_concurrency")
    ap.add_argument("--formats", default="gzip,zstd", help="S3 store_as values, comma-separated")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    info = machine()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="logferry-outputs-"))
    root.mkdir(parents=True, exist_ok=True)
    workload = root / "agent.log"
    workload.unlink(missing_ok=True)
    make_workload(workload, args.records, args.max_chars)
    size = workload.stat().st_size
    floor = run_floor(workload, root / "floor.out")
    report: dict[str, Any] = {**info, "records": args.records, "max_chars": args.max_chars, "bytes": size,
                              "workers": args.workers, "bulk_concurrency": args.bulk_concurrency,
                              "floor": {**floor, "records_per_s": args.records / floor["seconds"],
                                        "mb_per_s": size / floor["seconds"] / 1e6}}
    (root / "floor.out").unlink()
    for kind, (key, *_) in SEARCH_SERVERS.items():
        if args.only in (None, kind):
            report[key] = bench_search(kind, root, workload, args)
    if args.only in (None, "s3"):
        report["s3"] = bench_s3(root, workload, args)
    shutil.rmtree(root, ignore_errors=True)
    report.update(finish_run(info))
    print_header("outputs: backlog → tail → Elasticsearch / OpenSearch / S3, fresh daemon per run", info)
    print_results(report)
    tuned = args.workers != 1 or args.bulk_concurrency != 1
    name = f"outputs-w{args.workers}-b{args.bulk_concurrency}" if tuned else "outputs"
    write_results(f"{name}-{args.only}" if args.only else name, report)


if __name__ == "__main__":
    main()
