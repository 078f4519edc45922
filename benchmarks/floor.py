#!/usr/bin/env python3
"""The least work a Python pipeline must do per record: our own copy of the yardstick.

Same loop as the shared ``floor.py`` the project is measured against (read 1 MiB blocks,
split lines, orjson parse, add hostname and ingested_at, serialise, append), so the
benchmarks run from a clean clone; ``catchup.py`` prefers the shared one when present.

  floor.py INPUT [OUTPUT]
"""

import os
import socket
import sys
import time
from datetime import UTC, datetime

import orjson


def main() -> None:
    src = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) > 2 else os.devnull
    host = socket.gethostname()
    n = nbytes = 0
    t0 = time.perf_counter()
    with open(src, "rb") as f, open(dst, "ab") as out:
        rest = b""
        while block := f.read(1 << 20):
            nbytes += len(block)
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            buf = []
            for line in lines:
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if type(rec) is not dict:
                    continue
                rec["hostname"] = host
                rec["ingested_at"] = now
                buf.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
                n += 1
            out.write(b"".join(buf))
    dt = time.perf_counter() - t0
    print(f"records={n} seconds={dt:.3f} records_per_s={n / dt:.0f} MB_per_s={nbytes / dt / 1e6:.1f}")


if __name__ == "__main__":
    main()
