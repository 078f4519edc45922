"""Shared fixtures: a pipeline layout in a temporary directory and the real daemon on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, Layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """Logs, outputs and state of one test pipeline."""
    return Layout(tmp_path)


@pytest.fixture
def daemon_factory(layout: Layout) -> Iterator[list[Daemon]]:
    """Daemons created by a test; any still running at the end is killed."""
    made: list[Daemon] = []
    yield made
    for daemon in made:
        daemon.__exit__(None)


def new_daemon(
    layout: Layout, made: list[Daemon], env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> Daemon:
    """A daemon on ``layout``'s config, registered for cleanup."""
    daemon = Daemon(layout.config, layout.root / "daemon.log", env, prefix)
    made.append(daemon)
    return daemon
