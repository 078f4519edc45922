"""`logferry status`: a human summary from the daemon's /status, or from the state directory.

Operators often run it as themselves, and the service keeps its state directory 0750:
an unreadable state directory is reported with the fix, never as a traceback.
"""

from __future__ import annotations

import grp
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from pipeline.buffer.chunk import Chunk
from pipeline.config import Settings


def endpoint(settings: Settings) -> str | None:
    """The address the running daemon serves on (written at start), else the configured one.

    The configured one is also the answer when the state directory cannot be read: it is
    right unless ``listen`` asks for a free port (``:0``).
    """
    try:
        written = (settings.state_dir / "http.address").read_text().strip()
    except OSError:
        written = ""
    return written or settings.health.listen or None


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
        lines += [f"  {f['path']}: lag {size(f['lag_bytes'])}{_file_state(f)}" for f in src["files"]]
        lines += [f"  {path}: UNREADABLE by the daemon's user" for path in src.get("unreadable", [])]
        if net := src.get("network"):
            lines.append(f"  listening on {net['listen']}: {net['connections']} connections, {net['acks']} acks, "
                         f"{net['refused_handshakes']} refused handshakes")
        if "instance_id" in src:  # a kafka source: static member id, or dynamic membership
            member = src["instance_id"]
            lines.append(f"  group member: {f'static, instance id {member}' if member else 'dynamic'}")
        lines += [f"  {p['path']}: lag {p['lag'] if p['lag'] is not None else '?'} messages (committed to "
                  f"offset {p['committed']}; {p['batches_in_flight']} batches on their way to the buffers)"
                  for p in src.get("partitions", [])]
    for name, out in snap["outputs"].items():
        state = "FAILING" if out.get("problem") or out["failing"] else "ok"
        lines.append(f"output {name}: {state}; buffer {size(out['buffer_bytes'])} of "
                     f"{size(out['buffer_limit_bytes'])} ({out['chunks']} chunks); "
                     f"delivered {out['delivered_records']} records; {out['dead_chunks']} chunks set aside")
        if out["last_error"]:
            lines.append(f"  last error {_ago(out['last_error_time'])}: {out['last_error']}")
    return "\n".join(lines)


def _file_state(entry: dict[str, Any]) -> str:
    if entry["stalled"]:
        return "  STALLED"
    return "  PAUSED (buffer full)" if entry.get("paused") else ""


def _ago(when: float | None) -> str:
    return "never" if when is None else f"{time.time() - when:.0f}s ago"


def render_stopped(settings: Settings, address: str | None) -> str:
    """What the state directory says when no daemon answers (or how to let us read it)."""
    head = f"logferry: not running (no answer at {address or 'no endpoint configured'})"
    try:
        return "\n".join([head, *_state_lines(settings)])
    except OSError as exc:
        return "\n".join([head, unreadable_state(settings.state_dir, exc)])


def unreadable_state(state_dir: Path, exc: OSError) -> str:
    """The message for a state directory this user cannot read, with the fix.

    >>> message = unreadable_state(Path("/nonexistent/state"), PermissionError(13, "Permission denied"))
    >>> message.startswith("cannot read the state directory /nonexistent/state: Permission denied; run `sudo")
    True
    """
    return (f"cannot read the state directory {state_dir}: {exc.strerror or exc}; run `sudo logferry status`, "
            f"or join the directory's group (sudo usermod -aG {_group_of(state_dir)} \"$USER\", then log in again)")


def _group_of(path: Path) -> str:
    """The group owning ``path`` (``GROUP`` when even that cannot be found out)."""
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "GROUP"


def _state_lines(settings: Settings) -> list[str]:
    """Buffers, set-aside chunks and positions; OSError when the state directory is unreadable."""
    try:
        os.listdir(settings.state_dir)  # glob() would show an unreadable directory as an empty one
    except FileNotFoundError:
        return [f"no state directory {settings.state_dir} yet (the daemon has not run)"]
    lines = []
    for name in settings.outputs:
        directory = settings.state_dir / "buffer" / name
        chunks = [p for p in _listing(directory) if Chunk.parse_name(p)]
        dead = [p for p in _listing(directory / "dead") if p.name.endswith(".error.json")]
        lines.append(f"output {name}: {len(chunks)} chunks ({size(sum(p.stat().st_size for p in chunks))}) "
                     f"buffered, {len(dead)} set aside")
        lines += [f"  set aside: {orjson.loads(p.read_bytes()).get('error')}" for p in dead[:5]]
    return lines + _positions(settings.state_dir / "positions.json")


def _listing(directory: Path) -> list[Path]:
    """The entries of a directory, none if it does not exist; other errors raise."""
    try:
        return sorted(directory.iterdir())
    except FileNotFoundError:
        return []


def _positions(path: Path) -> list[str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ["no positions saved yet"]
    lines = []
    for item in orjson.loads(raw).get("files", []):
        try:
            lag = max(Path(item["path"]).stat().st_size - item["offset"], 0)
            lines.append(f"  {item['path']}: lag {size(lag)}")
        except FileNotFoundError:
            lines.append(f"  {item['path']}: gone (rotated away)")
        except OSError as exc:
            lines.append(f"  {item['path']}: cannot stat: {exc.strerror}")
    return lines
