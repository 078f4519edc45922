"""Drive the real daemon process in tests: config files, start/stop/kill, polling, ledgers."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.sources.tail.reader import file_key

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@contextlib.contextmanager
def streaming(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A process that prints until stopped (``logferry tap``); terminated on the way out, also when the test fails."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO) as process:
        try:
            yield process
        finally:
            process.terminate()  # Popen's own exit would wait forever


def read_lines(process: subprocess.Popen[bytes], count: int, timeout: float = 60.0) -> list[bytes]:
    """The first ``count`` lines ``process`` prints; fails after ``timeout`` instead of hanging on a readline."""
    assert process.stdout is not None
    fd, data = process.stdout.fileno(), b""
    deadline = time.monotonic() + timeout
    while (got := data.count(b"\n")) < count:
        if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            raise AssertionError(f"{got} of {count} lines within {timeout}s")
        piece = os.read(fd, 1 << 16)
        if not piece:
            raise AssertionError(f"the output ended after {got} of {count} lines")
        data += piece
    return data.splitlines()[:count]


def toml_value(value: Any) -> str:
    """A Python value as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return orjson.dumps(str(value)).decode()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def render_toml(tables: dict[str, Any], prefix: str = "") -> str:
    """Nested dicts as TOML tables."""
    scalars = {k: v for k, v in tables.items() if not isinstance(v, dict)}
    nested = {k: v for k, v in tables.items() if isinstance(v, dict)}
    out = []
    if prefix and (scalars or not nested):
        out.append(f"[{prefix}]")
    out += [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
    for key, value in nested.items():
        out.append(render_toml(value, f"{prefix}.{key}" if prefix else key))
    return "\n".join(out) + "\n"


def complete_lines(raw: bytes, gzipped: bool = False) -> list[bytes]:
    """The newline-terminated, non-empty lines of a file that may still be growing."""
    if gzipped:
        raw = _complete_gzip_members(raw)
    return [line for line in raw[: raw.rfind(b"\n") + 1].splitlines() if line]


def _complete_gzip_members(raw: bytes) -> bytes:
    """The decompressed content of every complete member of a (possibly growing) gzip file."""
    out: list[bytes] = []
    while raw:
        member = zlib.decompressobj(31)
        try:
            data = member.decompress(raw)
        except zlib.error:
            break  # a member cut off in its header
        if not member.eof:
            break  # the last member is still being written
        out.append(data)
        raw = member.unused_data
    return b"".join(out)


@dataclass
class Layout:
    """Paths of one test pipeline: logs in, outputs out, state."""

    root: Path
    logs: Path = field(init=False)
    out: Path = field(init=False)
    state: Path = field(init=False)
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.logs, self.out, self.state = self.root / "log", self.root / "out", self.root / "state"
        self.config = self.root / "logferry.toml"
        for path in (self.logs, self.out):
            path.mkdir(parents=True, exist_ok=True)

    def write_config(self, buffer: dict[str, Any] | None = None, source: dict[str, Any] | None = None,
                     output: dict[str, Any] | None = None, **top: Any) -> Path:
        """A tail → file pipeline over this layout; keyword arguments override defaults."""
        health = {"listen": "127.0.0.1:0", **top.pop("health", {})}  # port 0: tests never collide
        doc: dict[str, Any] = {
            "state_dir": self.state, "shutdown_timeout": 10.0, **top, "health": health,
            "enrich": {"tag_key": "tag"},
            "sources": {"agent": {"type": "tail", "paths": [str(self.logs / "*.log")], "tag": "ai.interactions",
                                  "rescan_interval": 0.5, "rotate_wait": 1.0, **(source or {})}},
            "outputs": {"debug": {"type": "file", "path": str(self.out / "%Y%m%d-%H.jsonl"), **(output or {}),
                                  "buffer": {"flush_interval": 0.2, "retry_wait": 0.1, **(buffer or {})}}},
        }
        self.config.write_text(render_toml(doc))
        return self.config

    def records(self) -> list[dict[str, Any]]:
        """Every record in the file output, in file order.

        The daemon may be appending while we read: a chunk's trailing part that has not
        been written yet (an unfinished line or gzip member) is left out, as ``tail -f``
        would. A record that never gets completed still fails the ledger's count.
        """
        found: list[dict[str, Any]] = []
        for path in sorted(self.out.rglob("*")):
            if path.is_file():
                raw = path.read_bytes()
                found += [orjson.loads(line) for line in complete_lines(raw, gzipped=path.suffix == ".gz")]
        return found

    def http(self, path: str) -> tuple[int, bytes]:
        """GET a path from the running daemon's status endpoint: (status code, body)."""
        import urllib.error
        import urllib.request

        address = (self.state / "http.address").read_text().strip()
        try:
            with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def tap_viewers(self) -> int:
        """How many tap viewers the running daemon serves (0 while its endpoint does not answer)."""
        status, body = self.http("/status")
        return int(orjson.loads(body)["tap_viewers"]) if status == 200 else 0

    def saved_offset(self, path: Path) -> int:
        """The daemon's saved read position of the file at ``path`` now (-1 before its first save).

        By the file's inode when it exists: a generation rotated away keeps its saved position under
        the path it was followed at (agent.log, now agent.log.1), beside the new file's.
        """
        positions = self.state / "positions.json"
        if not positions.exists():
            return -1
        files = orjson.loads(positions.read_bytes())["files"]
        with contextlib.suppress(FileNotFoundError):
            key = file_key(path.stat())
            for f in files:
                if f["key"] == key:
                    return int(f["offset"])
            return -1
        by_path = {f["path"]: f["offset"] for f in files}
        return int(by_path.get(str(path), -1))

    def buffered_chunks(self, output: str = "debug") -> list[Path]:
        """An output's staged and queued chunks on disk (delivered ones are gone)."""
        directory = self.state / "buffer" / output
        return sorted([*directory.glob("*.staged"), *directory.glob("*.queued")])

    def dead_letters(self) -> list[dict[str, Any]]:
        """Entries of the record dead-letter store."""
        entries: list[dict[str, Any]] = []
        for path in sorted((self.state / "dead-letter").glob("records-*.jsonl")):
            entries += [orjson.loads(line) for line in complete_lines(path.read_bytes())]
        return entries


class Daemon:
    """The real ``logferry run`` process."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.prefix = prefix or []  # e.g. setpriv, to run without some capabilities
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        """Start in the background; output goes to ``log_path`` (appended across restarts)."""
        before = len(self.log())
        with self.log_path.open("ab") as log:
            proc = self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "pipeline", "run", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
            )
        wait_for(lambda: "logferry running" in self.log()[before:] or proc.poll() is not None, 30, what="daemon start")
        assert proc.poll() is None, f"daemon exited at start:\n{self.log()}"
        return self

    def log(self) -> str:
        """Everything the daemon printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def signal(self, sig: int) -> None:
        """Send a signal without waiting."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Ledger:
    """What arrived compared with what was written, by request_id."""

    lost: set[str]
    duplicated: dict[str, int]
    unexpected: set[str]

    @classmethod
    def compare(cls, expected: Iterable[str], records: Iterable[dict[str, Any]]) -> Ledger:
        """Match arrived records against expected ids."""
        want = set(expected)
        counts = Counter(str(r.get("request_id")) for r in records)
        return cls(
            lost=want - set(counts),
            duplicated={k: n for k, n in counts.items() if n > 1},
            unexpected={str(k) for k in counts if k not in want},
        )

    def assert_exact(self) -> None:
        """Exactly once: nothing lost, nothing twice, nothing foreign."""
        assert not self.lost, f"{len(self.lost)} lost, e.g. {sorted(self.lost)[:5]}"
        assert not self.duplicated, f"{len(self.duplicated)} duplicated, e.g. {list(self.duplicated.items())[:5]}"
        assert not self.unexpected, f"unexpected records: {sorted(self.unexpected)[:5]}"
