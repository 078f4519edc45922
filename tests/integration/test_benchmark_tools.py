"""The wait profiler still hooks the pipeline it profiles.

``benchmarks/profile_waits.py`` wraps pipeline methods by name from outside ``pipeline/``; a rename in
the pipeline broke it silently once (it wrapped ``TailSource._read_cached`` after that was gone). A
small run shows every stage it reports was really reached. Figures are not checked: speed lives in
the benchmarks, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import REPO

RECORDS = 20000


def test_profile_waits_reaches_every_stage_of_a_catch_up(tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/profile_waits.py", "--records", str(RECORDS), "--workdir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result_file = REPO / "benchmarks" / "results" / f"profile_waits-{RECORDS}-65536-fsync-true.json"
    result = json.loads(result_file.read_text())
    assert result["records"] == RECORDS
    calls = {row["stage"]: row["calls"] for row in result["stages"]}
    reads = calls.get("source.read_on_loop", 0) + calls.get("source.read_in_thread", 0)
    assert reads >= 1, calls
    for stage in ("processor.parse_enrich", "committer.stage_frames", "committer.thread",
                  "committer.thread.write_frames", "flusher.thread.write"):
        assert calls.get(stage, 0) >= 1, (stage, calls)
