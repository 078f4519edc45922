"""Smoke test of the test Elasticsearch: ``python -m tests.support.es_smoke [VERSION] [--restart] [--secure]``.

Fetches (first time) and starts the server, bulk-indexes 3 documents, checks ``_count`` == 3,
optionally stops and starts it on the same port and data (``--restart``) and counts again, prints timings.
``--secure`` starts it with security on (HTTPS, a file-realm user; requests authenticate by themselves).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .elasticsearch import (
    DEFAULT_VERSION,
    ElasticsearchServer,
    SecuredElasticsearchServer,
    ensure_distribution,
    find_java_home,
    request,
)

INDEX = "logferry-smoke"


def _bulk_body() -> str:
    lines = []
    for i in range(3):
        lines.append(json.dumps({"create": {"_index": INDEX, "_id": f"doc-{i}"}}))
        lines.append(json.dumps({"@timestamp": "2025-01-01T00:00:00Z", "message": f"hello {i}", "seq": i}))
    return "\n".join(lines) + "\n"


def _count(url: str) -> int:
    status, body = request("GET", f"{url}/{INDEX}/_count")
    if status != 200:
        raise SystemExit(f"_count failed: HTTP {status} {body}")
    return int(body["count"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("version", nargs="?", default=DEFAULT_VERSION)
    parser.add_argument("--restart", action="store_true", help="also stop_start() and count again")
    parser.add_argument("--secure", action="store_true", help="security on: HTTPS and a file-realm user")
    args = parser.parse_args(argv)
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    home = ensure_distribution(args.version)
    timings["distribution_s"] = time.monotonic() - t0
    print(f"distribution {home} ({timings['distribution_s']:.1f}s), java {find_java_home(args.version)}")

    server = (SecuredElasticsearchServer if args.secure else ElasticsearchServer)(args.version)
    t0 = time.monotonic()
    with server:
        timings["start_to_green_s"] = time.monotonic() - t0
        print(f"started {server.server_version()} at {server.url} in {timings['start_to_green_s']:.1f}s")
        if isinstance(server, SecuredElasticsearchServer):
            print(f"user {server.username}, CA {server.ca_file}; API key: {server.api_key_problem or 'made'}")
        status, body = request(
            "POST", f"{server.url}/_bulk?refresh=true", _bulk_body(),
            headers={"Content-Type": "application/x-ndjson"},
        )  # fmt: skip
        if status != 200 or body.get("errors"):
            raise SystemExit(f"_bulk failed: HTTP {status} {json.dumps(body)[:2000]}")
        count = _count(server.url)
        if count != 3:
            raise SystemExit(f"expected _count 3, got {count}")
        rss = server.rss_bytes()
        print(f"_bulk + _count ok (3 docs); RSS {rss / 2**20:.0f} MiB (launcher + server JVM)")
        if args.restart:
            port = server.http_port
            t0 = time.monotonic()
            server.stop_start()
            timings["stop_start_s"] = time.monotonic() - t0
            if server.http_port != port or _count(server.url) != 3:
                raise SystemExit("documents or port lost across stop_start()")
            print(f"stop_start ok on port {port} in {timings['stop_start_s']:.1f}s, still 3 docs")
        t0 = time.monotonic()
    timings["stop_s"] = time.monotonic() - t0
    timings["rss_mib"] = round(rss / 2**20)
    print("SMOKE OK " + json.dumps({"version": args.version, **{k: round(v, 1) for k, v in timings.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
