"""ParsePool with transforms: the workers run the sources' chains and give exactly what the event loop gives."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.clock import FakeClock
from pipeline.config import EnrichConfig
from pipeline.runtime.parse_pool import IN_BYTES, MIN_WORKER_BYTES, ParsePool
from pipeline.runtime.tap import TapHub
from pipeline.sources.base import LineBatch
from pipeline.transforms.cost.config import CostTransformConfig
from pipeline.transforms.cost.transform import CostTransform
from pipeline.transforms.plan import SourceRoute, TransformPlan
from pipeline.transforms.records import ProcessedBatch, RecordProcessor, TimeGroup
from pipeline.transforms.redact.config import RedactTransformConfig
from pipeline.transforms.redact.transform import RedactTransform
from tests.unit.test_parse_pool import message_batch, run_pool

WALL = 1_795_000_000.0
HOUR = 3600
EMAIL = "maria.garcia@example.com"
TOKEN = "ghp_" + "A1b2C3d4E5" * 4
Flat = dict[int, tuple[bytes, list[int]]]


def plan(key_file: Path, route: SourceRoute) -> TransformPlan:
    """A redact (e-mail hashed with the key in ``key_file``, the rest masked) and a cost transform."""
    redact = RedactTransformConfig.model_validate(
        {"type": "redact", "hash_key_file": key_file, "detectors": {"email": "hash"}})
    cost = CostTransformConfig.model_validate({"type": "cost", "prices": {"gpt-*": {"input": 2.5, "output": 10}}})
    return TransformPlan({"pii": RedactTransform("pii", redact), "cost": CostTransform("cost", cost)},
                         {"agent": route})


def processor(key_file: Path, route: SourceRoute) -> RecordProcessor:
    return RecordProcessor(EnrichConfig(hostname="host-1", tag_key="tag"), {HOUR, 60}, FakeClock(WALL),
                           plan(key_file, route))


def block(n: int) -> bytes:
    """Records with secrets (one in ten), plain ones, bad lines, and two hours' windows."""
    lines = []
    for i in range(n):
        secret = f"mail {EMAIL} and {TOKEN}" if i % 10 == 3 else "nothing to hide here"
        record = {"request_id": f"r{i}", "prompt": f"{secret} {i}", "response": "ok",
                  "model": "gpt-4o", "usage": {"prompt_tokens": i, "completion_tokens": 7},
                  "timestamp": WALL - HOUR * (i % 2)}
        lines.append(orjson.dumps(record) + b"\n")
        if i % 500 == 7:
            lines.append(b'{"prompt": "leaked ' + EMAIL.encode() + b'" broken\n')
    data = b"".join(lines)
    assert MIN_WORKER_BYTES < len(data) <= IN_BYTES
    return data


def make_batch(data: bytes, start: int) -> LineBatch:
    return LineBatch("agent", "ai.chat", "7:42", "/logs/agent.jsonl", start, start + len(data), data, None)


def flat(groups: dict[int, TimeGroup]) -> Flat:
    return {window: (b"".join(g.lines), g.offsets) for window, g in groups.items()}


def flatten(item: ProcessedBatch) -> tuple[dict[int, Flat], dict[str, Flat], list[dict[str, Any]], int]:
    """Everything the committer and the dead-letter store take of a batch (a CRC, where given, must hold)."""
    for windows in [*item.groups.values(), *item.by_output.values()]:
        assert all(g.crc is None or g.crc == zlib.crc32(b"".join(g.lines)) for g in windows.values())
    groups = {width: flat(windows) for width, windows in item.groups.items()}
    outputs = {name: flat(windows) for name, windows in item.by_output.items()}
    return groups, outputs, item.dead, item.records


async def through_pool(pool: ParsePool, batches: list[LineBatch]) -> list[ProcessedBatch]:
    pool.start()
    try:
        return await run_pool(pool, batches)
    finally:
        pool.close()


def stats(proc: RecordProcessor) -> dict[str, Any]:
    return {name: t.stats() for name, t in proc.plan.transforms.items()}


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [1, 2])
async def test_workers_run_the_transforms_and_give_the_loops_bytes_offsets_windows_and_dead_letters(
        tmp_path: Path, workers: int) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(b"s3cret-key\n")
    # "search" prices then redacts, "costed" only prices, "priced" redacts then prices (what the redaction
    # changed), "archive" (no chain) takes the records as parsed.
    route = SourceRoute((), {"search": (HOUR, ("cost", "pii")), "costed": (60, ("cost",)),
                             "priced": (HOUR, ("pii", "cost"))})
    data = [block(3000), block(2000), block(2500)]
    batches = [(d, 10_000_000 * n) for n, d in enumerate(data)]
    loop = processor(key_file, route)
    expected = [flatten(loop.process(make_batch(d, s))) for d, s in batches]
    in_workers = processor(key_file, route)
    key_file.unlink()  # read at load time: the workers get the key from the daemon, not from the file

    got = await through_pool(pool := ParsePool(in_workers, workers), [make_batch(d, s) for d, s in batches])

    assert pool.blocks == len(data) and pool.inline == 0, "every block went to a worker"
    assert [flatten(item) for item in got] == expected
    groups, outputs, dead, records = expected[0]
    assert sorted(groups) == [60, HOUR] and len(groups[HOUR]) == 2, "two windows, the records as parsed"
    search = b"".join(payload for payload, _ in outputs["search"].values())
    assert EMAIL.encode() not in search and TOKEN.encode() not in search and b"[HMAC:email:" in search
    assert EMAIL.encode() in b"".join(p for p, _ in groups[HOUR].values()), "archive takes them raw"
    assert b'"cost_usd"' in b"".join(p for p, _ in outputs["costed"].values())
    assert dead and all(EMAIL not in str(entry) for entry in dead), "dead letters masked as in-process"
    assert records == 3000 and len(dead) == 6
    # What the transforms counted in the workers is counted in the daemon, as if they had run there.
    assert stats(in_workers) == stats(loop)
    assert stats(loop)["pii"]["redactions"]["email"] == 2 * 750 + 6 + 4 + 5  # two chains' records, the bad lines
    assert stats(loop)["cost"]["records"]["other"] == 2 * 7500, "the shared prefix (\"cost\",) ran once per block"
    priced = b"".join(payload for payload, _ in outputs["priced"].values())
    assert EMAIL.encode() not in priced and priced.count(b'"cost_usd"') == 3000


@pytest.mark.asyncio
async def test_a_kafka_batch_keeps_its_message_offsets_in_every_variant_and_masked_dead_letter(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(b"s3cret-key\n")
    route = SourceRoute((), {"search": (HOUR, ("cost", "pii")), "costed": (60, ("cost",))})
    lines = block(2000).splitlines()  # records with secrets, bad lines, two windows: one message each
    offsets = [7_000 + 2 * n + (n // 500) for n in range(len(lines))]  # with gaps, as transaction markers leave

    expected = flatten(processor(key_file, route).process(message_batch(lines, offsets, "agent")))
    got = await through_pool(pool := ParsePool(processor(key_file, route), 1), [message_batch(lines, offsets, "agent")])

    assert pool.blocks == 1, "the worker took it"
    assert flatten(got[0]) == expected
    groups, outputs, dead, _ = expected
    taken = {o for windows in [*groups.values(), *outputs.values()] for _, offs in windows.values() for o in offs}
    assert taken <= set(offsets) and len(outputs["search"]) == 2, "message offsets, in each variant's windows"
    assert dead and {e["offset"] for e in dead} <= set(offsets), "a bad message's dead letter names its offset"
    assert all(EMAIL not in str(entry) for entry in dead), "and is masked, as on the loop"


@pytest.mark.asyncio
async def test_when_every_output_has_its_own_chain_no_plain_groups_are_made(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(b"k")
    route = SourceRoute((), {"search": (HOUR, ("pii",))}, plain=False)
    data = block(3000)
    expected = flatten(processor(key_file, route).process(make_batch(data, 0)))
    assert expected[0] == {}, "nobody takes the records as parsed"

    pool = ParsePool(processor(key_file, route), 1)
    (got,) = await through_pool(pool, [make_batch(data, 0)])

    assert pool.blocks == 1 and flatten(got) == expected
    hub = TapHub({"agent": ["search"]})
    viewer = hub.subscribe([], set())  # no output named: what the outputs take, never the raw records
    hub.publish(got)
    shown = viewer.queue.get_nowait()
    assert EMAIL.encode() not in shown and shown.count(b"\n") == 3000


@pytest.mark.asyncio
async def test_a_block_whose_variants_do_not_fit_the_slot_is_processed_on_the_loop(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(b"k")
    # Every record full of addresses whose hashes are much longer than they: the variant outgrows what the
    # result area holds, and nothing is cut or lost.
    record = orjson.dumps({"prompt": " ".join(["a@b.co"] * 20), "timestamp": WALL}) + b"\n"
    data = record * (100_000 // len(record))
    route = SourceRoute((), {"search": (HOUR, ("pii",))})
    loop = processor(key_file, route)
    expected = flatten(loop.process(make_batch(data, 0)))
    area = 128 << 10
    size = sum(len(p) for p, _ in expected[0][HOUR].values()) + sum(len(p) for p, _ in expected[1]["search"].values())
    assert size > area * 2, "larger than the area sized for the records and one variant"
    in_workers = processor(key_file, route)

    pool = ParsePool(in_workers, 1, out_bytes=area)
    (got,) = await through_pool(pool, [make_batch(data, 0)])

    assert pool.blocks == 0 and pool.inline == 1
    assert flatten(got) == expected
    assert stats(in_workers) == stats(loop), "counted once: the worker's count of a block it gave back is dropped"
