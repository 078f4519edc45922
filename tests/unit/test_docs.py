"""The examples in the docstrings are true: run every module's doctests."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pipeline


def _skipped(name: str) -> bool:
    return name == "pipeline.__main__" or name == "pipeline.client" or name.startswith("pipeline.client.")


def documented_modules() -> list[str]:
    """Every module under pipeline/ (client and __main__ aside) with at least one doctest example."""
    names = [pipeline.__name__]
    names += [i.name for i in pkgutil.walk_packages(pipeline.__path__, prefix="pipeline.") if not _skipped(i.name)]
    finder = doctest.DocTestFinder()
    return sorted(n for n in names if any(t.examples for t in finder.find(importlib.import_module(n))))


DOCUMENTED = documented_modules()


def test_the_documented_modules_are_found() -> None:
    for expected in ("pipeline.buffer.frame", "pipeline.config", "pipeline.transforms.parse_json", "pipeline.clock"):
        assert expected in DOCUMENTED
    assert not any(_skipped(n) for n in DOCUMENTED)


@pytest.mark.parametrize("name", DOCUMENTED)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
