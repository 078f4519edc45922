"""`logferry status`: a human summary from the daemon's /status, or from the state directory."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from pipeline.buffer.chunk import Chunk
from pipeline.config import Settings


def endpoint(settings: Settings) -> str | None:
    """The address the running daemon serves on (written at start), else the configured one."""
    written = settings.state_dir / "http.address"
    if written.exists():
        return written.read_text().strip()
    return settings.health.listen or None


def fetch(address: str) -> dict[str, Any] | None:
    """The daemon's snapshot, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=5) as response:
            snapshot: dict[str, Any] = orjson.loads(response.read())
            return snapshot
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def size(n: float) -> str:
    """Bytes for people.

    >>> size(512), size(3 * 1024 * 1024)
    ('512 B', '3.0 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def render_running(snap: dict[str, Any]) -> str:
    """The summary of a running daemon."""
    lines = ["logferry: " + ("healthy" if snap["healthy"] else "UNHEALTHY")]
    lines += [f"  problem: {p}" for p in snap["problems"]]
    for name, src in snap["sources"].items():
        lines.append(f"source {name} (tag {src['tag']}): {src['records']} records, {src['dead_lines']} dead lines")
        lines += [f"  {f['path']}: lag {size(f['lag_bytes'])}" + ("  STALLED" if f["stalled"] else "")
                  for f in src["files"]]
        lines += [f"  {path}: UNREADABLE by the daemon's user" for path in src["unreadable"]]
    for name, out in snap["outputs"].items():
        state = "FAILING" if out.get("problem") or out["failing"] else "ok"
        lines.append(f"output {name}: {state}; buffer {size(out['buffer_bytes'])} of "
                     f"{size(out['buffer_limit_bytes'])} ({out['chunks']} chunks); "
                     f"delivered {out['delivered_records']} records; {out['dead_chunks']} chunks set aside")
        if out["last_error"]:
            lines.append(f"  last error {_ago(out['last_error_time'])}: {out['last_error']}")
    return "\n".join(lines)


def _ago(when: float | None) -> str:
    return "never" if when is None else f"{time.time() - when:.0f}s ago"


def render_stopped(settings: Settings, address: str | None) -> str:
    """What the state directory says when no daemon answers."""
    lines = [f"logferry: not running (no answer at {address or 'no endpoint configured'})"]
    for name in settings.outputs:
        directory = settings.state_dir / "buffer" / name
        chunks = [p for p in directory.glob("*") if Chunk.parse_name(p)] if directory.is_dir() else []
        dead = list((directory / "dead").glob("*.error.json")) if (directory / "dead").is_dir() else []
        lines.append(f"output {name}: {len(chunks)} chunks ({size(sum(p.stat().st_size for p in chunks))}) "
                     f"buffered, {len(dead)} set aside")
        lines += [f"  set aside: {orjson.loads(p.read_bytes()).get('error')}" for p in dead[:5]]
    lines += _positions(settings.state_dir / "positions.json")
    return "\n".join(lines)


def _positions(path: Path) -> list[str]:
    if not path.exists():
        return ["no positions saved yet"]
    lines = []
    for item in orjson.loads(path.read_bytes()).get("files", []):
        try:
            lag = max(Path(item["path"]).stat().st_size - item["offset"], 0)
            lines.append(f"  {item['path']}: lag {size(lag)}")
        except OSError:
            lines.append(f"  {item['path']}: gone (rotated away)")
    return lines
