"""The redact transform on the labelled corpus: recall >= 99 % per detector, false positives <= 0.1 %.

The same figures, per detector, are printed by tools/redact_accuracy.py.
"""

from __future__ import annotations

import orjson
import pytest

from pipeline.transforms.redact.config import RedactTransformConfig
from pipeline.transforms.redact.detectors import BUILTIN
from pipeline.transforms.redact.transform import RedactTransform
from tests.support.redact_corpus import Result, evaluate


@pytest.fixture(scope="module")
def result() -> Result:
    transform = RedactTransform("pii", RedactTransformConfig(type="redact"))
    return evaluate(lambda lines: transform.apply(lines, [orjson.loads(line) for line in lines])[0])


@pytest.mark.parametrize("detector", [d.name for d in BUILTIN])
def test_recall_per_detector(result: Result, detector: str) -> None:
    assert result.total[detector] >= 300
    assert result.recall(detector) >= 0.99, f"{detector}: {result.found[detector]}/{result.total[detector]}"


def test_false_positives_on_near_misses_prose_and_code(result: Result) -> None:
    assert result.negatives >= 3000
    assert result.false_rate() <= 0.001, result.false_samples[:5]
