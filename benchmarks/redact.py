#!/usr/bin/env python3
"""Redaction engines compared in-process on the same lines: why the redact transform uses Hyperscan.

  .venv/bin/python benchmarks/redact.py                    # 20,000 typical records
  .venv/bin/python benchmarks/redact.py --leak-every 10    # every 10th record holds an e-mail and a key
  .venv/bin/python benchmarks/redact.py --shared-workload  # ../shared/bench/gen_interactions.py's records

For each engine: MB/s of raw JSON lines, single thread, best of --runs. The workload is
pipeline.generator's (prompt + response ≈ 90 % of each line); with --leak-every N every Nth
record's input gets an e-mail address, an OpenAI key and a card number.

  transform        the redact transform as the daemon runs it, given the parsed records (Hyperscan
                   prefilter over each batch's prompt and response text, Python checks on candidates)
  re-combined      Python's re: the same anchors as one alternation, searched in each record's
                   prompt and response (timed on --sample records: it is slow)
  re2-combined     google-re2 with the same alternation (if installed)
  detect-secrets   its default plugins over each line's prompt and response (if installed)

Then the transform's own cost in CPU seconds per 100,000 records (the figure to compare on a
busy machine): in all, and its stages: the line filter over the serialised lines (all a record
with nothing to redact costs), then, for every record as if all were flagged, the field-level
stage (the fields' text in UTF-8; the prefilter's scan).

Engines that are not installed are reported as such. Prints the machine and load like the
other scripts; writes benchmarks/results/redact-<records>-<leak>.json.
"""

from __future__ import annotations

import argparse
import importlib
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from common import machine, make_workload, print_header, write_results

from pipeline import generator
from pipeline.transforms.redact.config import RedactTransformConfig
from pipeline.transforms.redact.detectors import BUILTIN
from pipeline.transforms.redact.transform import RedactTransform

BATCH_BYTES = 1 << 20
T = TypeVar("T")
Groups = list[tuple[list[bytes], list[dict[str, Any]]]]  # the tail source's default read_bytes


def workload(records: int, leak_every: int, shared: bool = False) -> list[bytes]:
    """Typical records (``pipeline.generator``'s or the shared generator's), every Nth one leaking."""
    if shared:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "workload.jsonl"
            make_workload(path, records, 65536, shared=True)
            parsed = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    else:
        parsed = list(generator.records(records, max_chars=65536))
    lines = []
    for record in parsed:
        if leak_every and record["seq"] % leak_every == 0:
            record["input"] = (f"write to ana{record['seq']}@example.com, key sk-proj-{'Ab1' * 16}, "
                               f"card 4111 1111 1111 1111. " + record["input"])
        lines.append(orjson.dumps(record) + b"\n")
    return lines


def batches(lines: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = [[]]
    size = 0
    for line in lines:
        out[-1].append(line)
        size += len(line)
        if size >= BATCH_BYTES:
            out.append([])
            size = 0
    return [b for b in out if b]


def best_rate(run: Callable[[], None], nbytes: int, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e6


def transform_engine(lines: list[bytes]) -> Callable[[], None]:
    transform = RedactTransform("pii", RedactTransformConfig(type="redact"))
    groups = [(group, [orjson.loads(line) for line in group]) for group in batches(lines)]  # parsed upstream

    def run() -> None:
        for group, records in groups:
            transform.apply(group, records)
    return run


def combined_anchors() -> bytes:
    anchors = list(dict.fromkeys(a for d in BUILTIN for a in d.anchors))
    return b"|".join(b"(?:" + a.replace(b"(?i)", b"") + b")" for a in anchors)


def field_texts(lines: list[bytes]) -> list[str]:
    return [text for record in map(orjson.loads, lines) for text in (record["input"], record["output"])]


def re_engine(lines: list[bytes]) -> Callable[[], None]:
    pattern = re.compile(combined_anchors().decode(), re.IGNORECASE)
    texts = field_texts(lines)

    def run() -> None:
        for text in texts:
            pattern.search(text)
    return run


def re2_engine(lines: list[bytes]) -> Callable[[], None]:
    re2: Any = importlib.import_module("re2")
    pattern = re2.compile("(?i:" + combined_anchors().decode() + ")")
    texts = field_texts(lines)

    def run() -> None:
        for text in texts:
            pattern.search(text)
    return run


def detect_secrets_engine(lines: list[bytes]) -> Callable[[], None]:
    scan: Any = importlib.import_module("detect_secrets.core.scan")
    settings: Any = importlib.import_module("detect_secrets.settings")
    texts = [(r["input"], r["output"]) for r in map(orjson.loads, lines)]

    def run() -> None:
        with settings.default_settings():
            for prompt, response in texts:
                for text in (prompt, response):
                    for line in text.splitlines():
                        list(scan.scan_line(line))
    return run


def stage_costs(lines: list[bytes], runs: int) -> dict[str, float]:
    """CPU seconds per 100,000 records of the transform and of its stages, best of ``runs``.

    Each run gets freshly parsed records, as the daemon does: a string that has been written as
    UTF-8 once (orjson.dumps keeps that copy in the string) would flatter every later run.
    """
    transform = RedactTransform("pii", RedactTransformConfig(type="redact"))
    best = dict.fromkeys(("transform", "line_filter", "texts", "scan"), float("inf"))

    def parsed() -> Groups:
        return [(group, [orjson.loads(line) for line in group]) for group in batches(lines)]

    def line_filter(groups: Groups) -> object:
        return [transform.line_filter.flagged(lines) for lines, _ in groups if transform.line_filter is not None]

    def texts(groups: Groups) -> object:
        return [transform.redactor.texts(records) for _, records in groups]

    def scan(pieces: list[tuple[list[bytes], list[int], int]]) -> object:
        return [transform.prefilter.scan(*piece) for piece in pieces]

    def apply(groups: Groups) -> object:
        return [transform.apply(*group) for group in groups]

    for _ in range(runs):
        groups = parsed()
        best["line_filter"] = min(best["line_filter"], cpu(line_filter, groups))
        best["texts"] = min(best["texts"], cpu(texts, groups))
        best["scan"] = min(best["scan"], cpu(scan, [(*transform.redactor.texts(r), len(r)) for _, r in groups]))
        best["transform"] = min(best["transform"], cpu(apply, parsed()))
    return {name: seconds * 100_000 / len(lines) for name, seconds in best.items()}


def cpu(run: Callable[[T], object], given: T) -> float:
    start = time.process_time()
    run(given)
    return time.process_time() - start


ENGINES: dict[str, Callable[[list[bytes]], Callable[[], None]]] = {
    "transform": transform_engine, "re-combined": re_engine, "re2-combined": re2_engine,
    "detect-secrets": detect_secrets_engine,
}
SLOW = {"re-combined", "detect-secrets"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--leak-every", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sample", type=int, default=500, help="lines the slow engines are timed on")
    ap.add_argument("--shared-workload", action="store_true", help="../shared/bench/gen_interactions.py's records")
    args = ap.parse_args()
    lines = workload(args.records, args.leak_every, args.shared_workload)
    report: dict[str, Any] = {**machine(), "records": args.records, "bytes": sum(map(len, lines)),
                              "leak_every": args.leak_every, "engines": {}}
    print_header("redaction engines, in-process, single thread", report)
    print(f"{args.records} records, {report['bytes'] / 1e6:.0f} MB, leak every {args.leak_every or 'never'}")
    for name, make in ENGINES.items():
        subset = lines[: args.sample] if name in SLOW else lines
        try:
            run = make(subset)
        except ImportError as exc:
            print(f"{name:16} not installed ({exc.name})")
            continue
        rate = best_rate(run, sum(map(len, subset)), 1 if name in SLOW else args.runs)
        report["engines"][name] = {"mb_per_s": rate, "lines": len(subset)}
        print(f"{name:16} {rate:9.1f} MB/s   ({len(subset)} lines)")
    report["cpu_s_per_100k"] = costs = stage_costs(lines, args.runs)
    print("CPU s per 100,000 records: " + ", ".join(f"{name} {cost:.3f}" for name, cost in costs.items()))
    shared = "-shared" if args.shared_workload else ""
    write_results(f"redact-{args.records}-{args.leak_every}{shared}", report)


if __name__ == "__main__":
    main()
