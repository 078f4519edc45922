#!/usr/bin/env python3
"""Recall and false positives of the redact transform, per detector, on the generated corpus.

  .venv/bin/python tools/redact_accuracy.py                 # 300 positives per detector, 3000 negatives
  .venv/bin/python tools/redact_accuracy.py --per-detector 1000 --negatives 10000 --show 5

The corpus is tests/support/redact_corpus.py (also asserted by tests/unit/test_redact_accuracy.py).
Every built-in detector is on, in mask mode, over the default fields.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.transforms.redact.config import RedactTransformConfig  # noqa: E402
from pipeline.transforms.redact.transform import RedactTransform  # noqa: E402
from tests.support.redact_corpus import evaluate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-detector", type=int, default=300)
    ap.add_argument("--negatives", type=int, default=3000)
    ap.add_argument("--show", type=int, default=0, help="print this many false-positive texts")
    args = ap.parse_args()
    transform = RedactTransform("pii", RedactTransformConfig(type="redact"))
    result = evaluate(lambda lines: transform.apply(lines, [orjson.loads(line) for line in lines])[0],
                      args.per_detector, args.negatives)
    print(f"{'detector':16} {'recall':>8} {'found':>7} {'false+':>7} {'false+ rate':>12}")
    for detector in sorted(result.total):
        print(f"{detector:16} {result.recall(detector):8.2%} {result.found[detector]:4}/{result.total[detector]:<4}"
              f" {result.false_by[detector]:5} {result.false_by[detector] / result.negatives:12.3%}")
    print(f"negatives: {result.negatives}, with any redaction: {len(result.false_samples)} "
          f"({result.false_rate():.3%})")
    for text in result.false_samples[: args.show]:
        print("  false positive:", repr(text))


if __name__ == "__main__":
    main()
