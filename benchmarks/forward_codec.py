#!/usr/bin/env python3
"""Forward input, in-process: the event loop's cost per PackedForward chunk, msgpack next to ormsgpack.

  .venv/bin/python benchmarks/forward_codec.py                # 20 chunks of 1,000 ~1 KB records
  .venv/bin/python benchmarks/forward_codec.py --chunks 50 --rounds 7

The chunks are forward.py's own (the same generator, EventTime entries). As in the daemon, the
heap built before the work is frozen out of the collector's passes (``gc.freeze``) and the
decoded chunks live a while (the last ``--in-flight`` kept, as records wait for their commit).
Each round times, per chunk, in alternation:

- PackedForward entries: msgpack alone, entry by entry (the fallback), ``unpack_records`` (entries
  counted by msgpack's ``skip``, decoded by ormsgpack, the time key set), the count apart (the
  source's framing check on the loop), and ormsgpack trusting the ``size`` option (a nil after the
  entries to catch a ``size`` too large; rejected: a ``size`` too small with a nil after that many
  entries goes unseen);
- a Forward-mode message of the same entries, decoded whole: msgpack's streaming Unpacker (what a
  connection does) and ormsgpack (which cannot stream: the message's end found by ``skip`` first);
- the processor (enrich, serialise, group) on the records each decoder gave.

Prints the median and the fastest round per stage, in ms per 1,000 records.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import tempfile
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import ormsgpack
from common import machine, make_workload, print_header
from forward import encode_chunks

from pipeline.clock import FakeClock
from pipeline.config import EnrichConfig
from pipeline.sources.base import LineBatch
from pipeline.sources.forward import codec
from pipeline.transforms import packed as entries
from pipeline.transforms.records import RecordProcessor


def trusting_size(raw: bytes, size: int) -> list[Any]:
    entries: list[Any] = ormsgpack.unpackb(struct.pack(">BI", 0xDD, size + 1) + raw + b"\xc0",
                                           ext_hook=codec.ext_hook)
    assert entries.pop() is None
    return entries


def forward_mode(message: bytes) -> bytes:
    """The PackedForward ``message`` as a Forward-mode one (EventTime kept as the extension)."""
    tag, raw, option = msgpack.unpackb(message, raw=False)
    stream = msgpack.Unpacker(raw=False, ext_hook=msgpack.ExtType)
    stream.feed(raw)
    data: bytes = msgpack.packb([tag, list(stream), option])
    return data


def streamed(message: bytes) -> object:
    stream = codec.unpacker(len(message))
    stream.feed(message)
    return next(stream)


def whole(message: bytes) -> object:
    stream = msgpack.Unpacker(max_buffer_size=len(message))
    stream.feed(message)
    stream.skip()
    return ormsgpack.unpackb(message[:stream.tell()], ext_hook=codec.ext_hook)


def slow(raw: bytes) -> list[Any]:
    """The entries decoded by msgpack alone, one by one (the fallback of pipeline/transforms/packed.py)."""
    ends, whole = entries.whole_objects(raw)
    assert whole
    return entries._msgpack_entries(raw, ends, [])


def fast(raw: bytes) -> list[Any] | None:
    """The entries counted by msgpack's skip and decoded by ormsgpack as one array."""
    ends, whole = entries.whole_objects(raw)
    assert whole
    return entries._ormsgpack_entries(raw, len(ends))


def process(processor: RecordProcessor, decoded: list[Any]) -> object:
    records = [record for _, record in decoded]
    return processor.process(LineBatch("fwd", "bench.forward", "c", "forward://peer", 0, len(records), b"", None,
                                       records=records))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20, help="PackedForward chunks of 1,000 records")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=4, help="decoded chunks kept alive, as in the daemon")
    ap.add_argument("--max-chars", type=int, default=400, help="generator size knob: 400 gives ~1 KB records")
    args = ap.parse_args()
    info = machine()
    workload = Path(tempfile.mkdtemp(prefix="logferry-bench-codec-")) / "records.jsonl"
    make_workload(workload, args.chunks * 1000, args.max_chars)
    chunks = [data for _, data, _ in encode_chunks(workload, 1000)]
    workload.unlink()
    packed = [(raw, option["size"]) for _, raw, option in (msgpack.unpackb(c, raw=False) for c in chunks)]
    forward = [forward_mode(c) for c in chunks]
    for raw, size in packed:  # the same Python objects, whichever way
        assert fast(raw) == slow(raw) == trusting_size(raw, size)
    processor = RecordProcessor(EnrichConfig(hostname="bench", tag_key="tag"), {3600}, FakeClock(1.8e9))
    stages: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
        "entries: msgpack per entry (fallback)": (lambda c: slow(c[0]), packed),
        "entries: unpack_records (count + ormsgpack)": (lambda c: entries.unpack_records(c[0], "timestamp"), packed),
        "entries:   its count (msgpack skip)": (lambda c: entries.whole_objects(c[0]), packed),
        "entries: ormsgpack trusting size (rejected)": (lambda c: trusting_size(*c), packed),
        "Forward mode: msgpack streaming Unpacker": (streamed, forward),
        "Forward mode: skip + ormsgpack": (whole, forward),
    }
    decoders = {"process: msgpack's records": slow, "process: ormsgpack's records": fast}
    times: dict[str, list[float]] = {name: [] for name in [*stages, *decoders]}
    gc.collect()
    gc.freeze()
    run: Callable[[Any], object]
    inputs: list[Any]
    for _ in range(args.rounds):
        for name in times:
            if name in decoders:  # the processor's input: records decoded that way (it changes them)
                run, inputs = partial(process, processor), [decoders[name](raw) for raw, _ in packed]
            else:
                run, inputs = stages[name]
            kept: deque[object] = deque(maxlen=args.in_flight)
            gc.collect()  # each stage starts with the same heap: no full pass left over from the one before
            start = time.perf_counter()
            for item in inputs:
                kept.append(run(item))
            times[name].append((time.perf_counter() - start) / len(chunks) * 1e3)
            del inputs, kept
    print_header("forward codec: event-loop cost per PackedForward chunk, msgpack and ormsgpack", info)
    print(f"{args.chunks} chunks of 1,000 records ({statistics.mean(len(r) for r, _ in packed) / 1e3:.0f} KB of "
          f"entries each), {args.rounds} rounds; msgpack {msgpack.version}, ormsgpack {ormsgpack.__version__}")
    print(f"  {'ms per 1,000 records':46} {'median':>7} {'fastest':>8}")
    for name, rows in times.items():
        print(f"  {name:46} {statistics.median(rows):>7.3f} {min(rows):>8.3f}")


if __name__ == "__main__":
    main()
