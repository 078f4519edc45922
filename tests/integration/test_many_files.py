"""Many files, few descriptors: files beyond max_open_files are parked and reopened, nothing lost."""

from __future__ import annotations

import os
from functools import partial

import orjson
import pytest

from tests.conftest import new_daemon
from tests.support.daemon import Ledger, wait_for

pytestmark = pytest.mark.integration
FILES, ROUNDS, LIMIT = 400, 3, 40


def test_hundreds_of_files_with_a_bounded_number_of_descriptors(layout, daemon_factory):
    layout.write_config(source={"max_open_files": LIMIT, "rescan_interval": 0.3})
    expected: list[str] = []
    peak = [0]
    with new_daemon(layout, daemon_factory) as daemon:
        assert daemon.proc is not None
        fd_dir = f"/proc/{daemon.proc.pid}/fd"
        baseline = len(os.listdir(fd_dir))

        def delivered(count: int) -> bool:
            peak[0] = max(peak[0], len(os.listdir(fd_dir)))
            return len(layout.records()) >= count

        for round_ in range(ROUNDS):
            for n in range(FILES):  # every file gets a line per round, so parked files must reopen
                rid = f"f{n}-r{round_}"
                expected.append(rid)
                with (layout.logs / f"agent-{n:04d}.log").open("ab") as out:
                    out.write(orjson.dumps({"request_id": rid, "input": "x" * 50}) + b"\n")
            wait_for(partial(delivered, len(expected)), timeout=60, interval=0.1, what=f"round {round_}")
        assert daemon.stop() == 0
    Ledger.compare(expected, layout.records()).assert_exact()
    assert peak[0] <= baseline + LIMIT + 5, f"peak {peak[0]} descriptors, baseline {baseline}, limit {LIMIT}"
