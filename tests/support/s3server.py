"""A throw-away S3 for the tests: ``moto_server`` (from ``moto[server]``) as a subprocess on 127.0.0.1.

Real HTTP on a free loopback port, so the daemon's own aiobotocore client talks to it
exactly as it would to AWS or MinIO (path-style addressing).

Outages: moto keeps every bucket and object in memory, so :meth:`S3Server.stop` followed by
:meth:`S3Server.start` (same port) comes back *empty*. Tests that need the data to survive
an outage use :meth:`S3Server.freeze` / :meth:`S3Server.thaw` (SIGSTOP/SIGCONT): the port
stays bound, connections are accepted by the kernel but nothing answers, so clients see
read timeouts, the way a hung or partitioned endpoint behaves. Requests sent while frozen
are served after the thaw (late): the output's idempotent keys must make that harmless.
A stop/start outage is for "the endpoint refuses connections" (and the test recreates its
bucket afterwards).

Usage::

    with S3Server(log_path) as s3:
        client = s3.client()
        client.create_bucket(Bucket="archive")
"""

from __future__ import annotations

import atexit
import gzip
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3  # type: ignore[import-untyped]  # (boto3-stubs not installed)
import orjson
import zstandard
from botocore.config import Config

# The venv's own script (beside this interpreter), else whatever is on PATH.
MOTO_SERVER = Path(sys.executable).with_name("moto_server")
if not MOTO_SERVER.exists():
    MOTO_SERVER = Path(shutil.which("moto_server") or "moto_server")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """``moto_server`` on 127.0.0.1: start, stop, start again on the same port, freeze and thaw.

    ``env`` adds server settings, e.g. ``{"INITIAL_NO_AUTH_ACTION_COUNT": "0"}`` to check
    credentials (then every access key that moto's IAM does not know is refused).
    """

    def __init__(self, log_path: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        atexit.register(self.stop)  # never leave a server behind, even if a test run is interrupted

    @property
    def url(self) -> str:
        """The endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> S3Server:
        """Start (again) on ``self.port`` and wait until it answers HTTP."""
        assert self.proc is None, "already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not answer within {timeout}s:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        """Whether an HTTP request gets any response within a second."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
        try:
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """Terminate the server (its buckets and objects are lost)."""
        if self.proc is None:
            return
        self.thaw()  # a stopped process would not act on SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the port stays open, nothing answers; state is kept."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self.proc is not None and self.frozen:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def log(self) -> str:
        """What the server printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **credentials: str) -> Any:
        """A plain boto3 client for checking what arrived (path-style, test credentials)."""
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=credentials.get("key", "testing"),
            aws_secret_access_key=credentials.get("secret", "testing"),
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 2}),
        )

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key in ``bucket`` under ``prefix``, sorted."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)


def decode_object(key: str, data: bytes) -> list[dict[str, Any]]:
    """The records of one object, decompressed by its extension."""
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    elif key.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return [orjson.loads(line) for line in data.splitlines() if line]


def read_objects(client: Any, bucket: str, prefix: str = "") -> dict[str, list[dict[str, Any]]]:
    """Every object's records, by key."""
    return {key: decode_object(key, client.get_object(Bucket=bucket, Key=key)["Body"].read())
            for key in list_keys(client, bucket, prefix)}


def all_records(client: Any, bucket: str) -> list[dict[str, Any]]:
    """Every record in every object of ``bucket``."""
    return [record for records in read_objects(client, bucket).values() for record in records]
