"""The file output with ``compress = "gzip"``: one gzip member per chunk, every record exactly once."""

from __future__ import annotations

import gzip
import zlib
from functools import partial
from pathlib import Path

import orjson
import pytest

from pipeline import generator
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, Ledger, wait_for
from tests.support.writer import AgentWriter

pytestmark = pytest.mark.integration


def ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def gzip_config(layout: Layout, **buffer: object) -> Path:
    """One output file for every time key, so that all chunks of the test are members of one file."""
    layout.write_config(output={"path": str(layout.out / "interactions.jsonl.gz"), "compress": "gzip"},
                        buffer=dict(buffer))
    return layout.out / "interactions.jsonl.gz"


def members(raw: bytes) -> list[bytes]:
    """The decompressed content of each gzip member, in order; a torn member fails the test."""
    out = []
    while raw:
        member = zlib.decompressobj(31)
        out.append(member.decompress(raw))
        assert member.eof, "the file ends inside a gzip member"
        raw = member.unused_data
    return out


def gzip_records(path: Path) -> list[dict[str, object]]:
    """Every record of the file, read the way zcat reads it: all members, concatenated."""
    with gzip.open(path) as handle:
        return [orjson.loads(line) for line in handle.read().splitlines()]


def delivered_at_least(layout: Layout, count: int) -> bool:
    # While the daemon may be appending: the Layout reads only the complete members.
    return len(layout.records()) >= count


def test_gzip_output_across_a_restart_holds_each_record_once(layout: Layout, daemon_factory: list[Daemon]) -> None:
    target = gzip_config(layout)
    log = layout.logs / "agent.log"
    generator.write(str(log), 300, max_chars=2000)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(delivered_at_least, layout, 300), what="the first 300 records")
        assert daemon.stop() == 0
    first = target.read_bytes()
    first_members = len(members(first))
    assert first_members >= 1
    generator.write(str(log), 200, start=300, max_chars=2000)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(delivered_at_least, layout, 500), what="all 500 records")
        assert daemon.stop() == 0
    raw = target.read_bytes()
    assert raw.startswith(first), "the first run's members are left as they were"
    assert len(members(raw)) > first_members, "the second run's chunk is a member of its own"
    records = gzip_records(target)
    Ledger.compare(ids(500), records).assert_exact()
    written = [*generator.records(300, max_chars=2000), *generator.records(200, start=300, max_chars=2000)]
    originals = {r["request_id"]: r for r in written}
    for record in records:
        assert {k: v for k, v in record.items() if k not in ("hostname", "ingested_at", "tag")} == \
            originals[str(record["request_id"])]


def test_gzip_output_after_sigkill_mid_stream_holds_each_record_once(
    layout: Layout, daemon_factory: list[Daemon]
) -> None:
    # Small chunks flushed often: many members, and deliveries in flight when the kill lands.
    target = gzip_config(layout, chunk_limit_bytes=64 * 1024, flush_interval=0.05)
    writer = AgentWriter(layout.logs / "agent.log", 3000, pause=0.002, max_chars=800)
    writer.start()
    daemon = new_daemon(layout, daemon_factory).start()
    wait_for(partial(delivered_at_least, layout, 1000), what="1000 records before the kill")
    daemon.kill()
    writer.join(60)
    assert writer.error is None
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(delivered_at_least, layout, 3000), what="all 3000 records after the restart")
        assert daemon.stop() == 0
    assert len(members(target.read_bytes())) >= 2
    Ledger.compare(ids(3000), gzip_records(target)).assert_exact()
