"""Tail → buffer → S3 output against a real HTTP S3 (``moto_server``), through the daemon's own aiobotocore client.

Fixtures live here (not in a conftest): a module-wide moto server, a fresh bucket per test.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from pipeline import generator
from pipeline.buffer import frame
from pipeline.buffer.chunk import Chunk, ChunkState, header_frame, new_chunk_id
from pipeline.clock import SystemClock
from pipeline.deadletter import DeadLetterStore
from pipeline.errors import RetryableError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.s3.config import S3OutputConfig
from pipeline.outputs.s3.encoder import content_md5
from pipeline.outputs.s3.output import S3Output, describe
from tests.conftest import new_daemon
from tests.support.daemon import Layout, Ledger, wait_for
from tests.support.s3server import CREDENTIALS, S3Server, all_records, list_keys, read_objects

pytestmark = pytest.mark.integration

HOSTNAME = os.uname().nodename
DAY = 1_794_960_000  # 2026-11-18T00:00:00Z
HOUR = 3600
DAEMON_ENV = {**CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
              "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
# Short timeouts and one attempt per request: outages show up in a second, and the buffer does the retrying.
FAST = {"connect_timeout": 1.0, "read_timeout": 1.0, "request_timeout": 2.0, "max_attempts": 1}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def client(s3: S3Server) -> Any:
    return s3.client()


@pytest.fixture
def bucket(client: Any) -> str:
    name = f"logs-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


def s3_output(url: str, bucket: str, **extra: Any) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, "endpoint_url": url, "addressing_style": "path",
            "path": "interactions/%Y/%m/%d/", **FAST, **extra}


def write_s3_config(layout: Layout, url: str, bucket: str, buffer: dict[str, Any] | None = None,
                    **extra: Any) -> None:
    layout.write_config(output=s3_output(url, bucket, **extra), buffer=buffer)


def ids(count: int, start: int = 0) -> list[str]:
    return [generator.request_id(1, n) for n in range(start, start + count)]


def has_objects(client: Any, bucket: str, want: int) -> bool:
    return len(list_keys(client, bucket)) >= want


def counted(client: Any, bucket: str, want: int) -> bool:
    return len(all_records(client, bucket)) >= want


def s3_error(code: str, status: int, message: str) -> Any:
    """The parsed error response botocore builds a ClientError from."""
    return {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}


def hour_prefix(epoch: float) -> str:
    return time.strftime("interactions/%Y/%m/%d/", time.gmtime(int(epoch) // HOUR * HOUR))


# -- (1) every record in exactly one object, keys partitioned by event time -------------------


@pytest.mark.parametrize(("store_as", "content_encoding"), [("gzip", False), ("zstd", False), ("gzip", True)])
def test_every_record_lands_in_exactly_one_object_under_its_date(layout, daemon_factory, s3, client, bucket,
                                                                 store_as, content_encoding):
    write_s3_config(layout, s3.url, bucket, {"chunk_limit_bytes": 1 << 20}, store_as=store_as,
                    content_encoding=content_encoding)
    generator.write(str(layout.logs / "agent.log"), 5000, max_chars=2000)
    with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
        assert "s3 output ready" in daemon.log()
        wait_for(lambda: counted(client, bucket, 5000), interval=0.2, what="5000 records in S3")
        assert daemon.stop() == 0
    objects = read_objects(client, bucket)
    Ledger.compare(ids(5000), [r for records in objects.values() for r in records]).assert_exact()
    ext = {"gzip": "jsonl.gz", "zstd": "jsonl.zst"}[store_as]
    name = re.compile(rf"^interactions/\d{{4}}/\d\d/\d\d/{re.escape(HOSTNAME)}-\d{{8}}T\d{{6}}Z-[0-9a-f]{{16}}\.{ext}$")
    assert len(objects) > 1  # 1 MiB chunks
    for key, records in objects.items():
        assert name.match(key), key
        assert {hour_prefix(r["timestamp"]) for r in records} == {key.rsplit("/", 1)[0] + "/"}
        head = client.head_object(Bucket=bucket, Key=key)
        if content_encoding:  # JSON Lines sent compressed: HTTP clients decompress it on download
            assert (head["ContentType"], head["ContentEncoding"]) == ("application/x-ndjson", store_as)
        else:  # a gzip / zstd file, as Fluentd's out_s3 stores it
            assert head["ContentType"] == {"gzip": "application/gzip", "zstd": "application/zstd"}[store_as]
            assert "ContentEncoding" not in head
        assert head["Metadata"]["records"] == str(len(records))


def test_late_records_for_an_earlier_hour_form_another_object_under_that_hour(layout, daemon_factory, s3, client,
                                                                              bucket):
    write_s3_config(layout, s3.url, bucket, {"flush_mode": "lazy", "timekey": HOUR, "timekey_wait": 1.0},
                    path="interactions/%Y/%m/%d/%H/", store_as="json")
    hour_h = DAY + 23 * HOUR  # 2026-11-18 23:00; H+1 is the next day

    def rows(tag: str, start: float, count: int) -> bytes:
        return b"".join(orjson.dumps({"request_id": f"{tag}{n}", "timestamp": start + n, "input": "x"}) + b"\n"
                        for n in range(count))

    log = layout.logs / "agent.log"
    log.write_bytes(rows("h", hour_h + 10, 50) + rows("next", hour_h + HOUR + 10, 50))
    with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
        wait_for(lambda: len(list_keys(client, bucket)) >= 2, what="the objects of H and H+1")
        with log.open("ab") as out:
            out.write(rows("late", hour_h + 1800, 20))
        wait_for(lambda: len(list_keys(client, bucket)) >= 3, what="the late object")
        daemon.stop()
    by_prefix: dict[str, list[set[str]]] = {}
    for key, records in read_objects(client, bucket).items():
        by_prefix.setdefault(key.rsplit("/", 1)[0], []).append({re.sub(r"\d+$", "", r["request_id"])
                                                                 for r in records})
    assert sorted(by_prefix) == ["interactions/2026/11/18/23", "interactions/2026/11/19/00"]
    assert sorted(map(sorted, by_prefix["interactions/2026/11/18/23"])) == [["h"], ["late"]]
    assert by_prefix["interactions/2026/11/19/00"] == [{"next"}]
    keys = list_keys(client, bucket, "interactions/2026/11/18/23/")
    assert all(f"/{HOSTNAME}-20261118T230000Z-" in k and k.endswith(".jsonl") for k in keys)
    Ledger.compare([f"h{n}" for n in range(50)] + [f"next{n}" for n in range(50)] + [f"late{n}" for n in range(20)],
                   all_records(client, bucket)).assert_exact()


# -- (2) outages ------------------------------------------------------------------------------


def test_frozen_server_mid_stream_then_back_delivers_everything_once(layout, daemon_factory, s3, client, bucket):
    write_s3_config(layout, s3.url, bucket, {"chunk_limit_bytes": 128 * 1024, "retry_wait": 0.2,
                                             "retry_max_interval": 1.0, "workers": 2})
    log = layout.logs / "agent.log"
    generator.write(str(log), 1500, max_chars=1000)
    with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
        wait_for(lambda: list_keys(client, bucket), what="first objects")
        s3.freeze()
        try:
            generator.write(str(log), 1500, start=1500, max_chars=1000)
            wait_for(lambda: daemon.log().count("delivery failed") >= 2, timeout=20, what="failed attempts")
        finally:
            s3.thaw()
        wait_for(lambda: counted(client, bucket, 3000), interval=0.2, what="3000 records after the thaw")
        assert daemon.stop() == 0
    assert "TimeoutError" in daemon.log()
    Ledger.compare(ids(3000), all_records(client, bucket)).assert_exact()


def test_endpoint_down_at_start_then_restarted_on_the_same_port(layout, daemon_factory, tmp_path):
    with S3Server(tmp_path / "moto2.log") as server:
        server.stop()
        write_s3_config(layout, server.url, "late-bucket", {"retry_wait": 0.2, "retry_max_interval": 0.5})
        generator.write(str(layout.logs / "agent.log"), 500, max_chars=1000)
        with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
            assert "s3 output cannot reach the bucket" in daemon.log()
            wait_for(lambda: "EndpointConnectionError" in daemon.log().split("logferry running")[-1],
                     what="a refused upload")
            server.start()  # same port; moto starts empty
            client = server.client()
            client.create_bucket(Bucket="late-bucket")
            wait_for(lambda: counted(client, "late-bucket", 500), interval=0.2, what="500 records")
            assert daemon.stop() == 0
        Ledger.compare(ids(500), all_records(client, "late-bucket")).assert_exact()


# -- (3) kill -9 during uploads ---------------------------------------------------------------


def test_sigkill_during_uploads_then_restart_loses_and_duplicates_nothing(layout, daemon_factory, s3, client,
                                                                          bucket):
    # 64 KiB reads and chunks: ~150 objects, so each kill lands while uploads are in flight.
    layout.write_config(output=s3_output(s3.url, bucket, store_as="zstd"), source={"read_bytes": 64 * 1024},
                        buffer={"chunk_limit_bytes": 64 * 1024, "flush_interval": 0.05, "workers": 2})
    total = 6000
    generator.write(str(layout.logs / "agent.log"), total, max_chars=800)
    rng = random.Random(20261127)
    for kill_at in sorted(rng.sample(range(10, 120), 3)):
        daemon = new_daemon(layout, daemon_factory, DAEMON_ENV).start()
        wait_for(partial(has_objects, client, bucket, kill_at), what=f"{kill_at} objects before the kill")
        daemon.kill()
    with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
        wait_for(lambda: counted(client, bucket, total), interval=0.3, what="all records after the kills")
        assert daemon.stop() == 0
    assert re.search(r"buffer resumed output=debug chunks=[1-9]", daemon.log()), "no kill landed mid-delivery"
    Ledger.compare(ids(total), all_records(client, bucket)).assert_exact()


# -- (4) bad credentials, missing bucket → clear errors, then dead/ ---------------------------


@pytest.mark.parametrize("case", ["missing-bucket", "bad-credentials"])
def test_unusable_bucket_is_logged_clearly_and_chunks_end_in_dead(layout, daemon_factory, s3, tmp_path, case):
    if case == "bad-credentials":  # a second server that checks credentials: "testing" is unknown to it
        server = S3Server(tmp_path / "moto-auth.log", env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
        url, expect_start, expect_error = server.url, "bad credentials", "InvalidAccessKeyId"
    else:
        server, url = None, s3.url
        expect_start, expect_error = "NoSuchBucket (HTTP 404) — the bucket does not exist", "NoSuchBucket"
    try:
        write_s3_config(layout, url, "no-such-bucket", {"retry_limit": 2, "retry_wait": 0.1, "retry_randomize": False})
        generator.write(str(layout.logs / "agent.log"), 100, max_chars=500)
        dead = layout.state / "buffer" / "debug" / "dead"
        with new_daemon(layout, daemon_factory, DAEMON_ENV) as daemon:
            assert expect_start in daemon.log()
            wait_for(lambda: list(dead.glob("*.error.json")), what="a chunk set aside")
            daemon.stop()
    finally:
        if server is not None:
            server.stop()
    (error_file,) = dead.glob("*.error.json")
    error = orjson.loads(error_file.read_bytes())
    assert error["attempts"] == 2 and error["records"] == 100
    assert expect_error in error["error"] and "s3://no-such-bucket/interactions/" in error["error"]
    assert daemon.log().count("delivery failed") == 1 and "chunk set aside" in daemon.log()
    assert "testing" not in daemon.log()  # credentials are never logged


def test_error_messages_name_the_s3_code_and_its_meaning():
    def error(code: str, status: int, message: str = "m") -> ClientError:
        return ClientError(s3_error(code, status, message), "PutObject")

    assert describe(error("AccessDenied", 403)).startswith("AccessDenied (HTTP 403): m — the credentials are valid")
    assert "secret access key does not match" in describe(error("SignatureDoesNotMatch", 403))
    assert "access key id is unknown" in describe(error("InvalidAccessKeyId", 403))
    assert describe(error("404", 404, "Not Found")).startswith("NoSuchBucket (HTTP 404) — the bucket does not exist")
    assert describe(error("Teapot", 418)) == "Teapot (HTTP 418): m"


# -- (5) the output alone: multipart, abort, integrity, idempotent keys -----------------------


def make_chunk(directory: Path, payloads: list[bytes], timekey: int = DAY + 11 * HOUR) -> Chunk:
    chunk = Chunk(directory, timekey, new_chunk_id(), ChunkState.QUEUED)
    chunk.write(header_frame(chunk, 1, "archive"))
    for seq, payload in enumerate(payloads, 2):
        chunk.write(frame.encode(frame.KIND_DATA, seq, payload.count(b"\n"), {}, payload))
    chunk.records = sum(p.count(b"\n") for p in payloads)
    chunk.close()
    return chunk


def big_payloads(min_bytes: int) -> list[bytes]:
    """Generated records in ~256 KiB frames, at least ``min_bytes`` in all."""
    payloads, batch, size = [], [], 0
    for line in generator.lines(100_000, max_chars=16384):
        batch.append(line)
        size += len(line)
        if sum(map(len, batch)) >= 256 * 1024 or size >= min_bytes:
            payloads.append(b"".join(batch))
            batch = []
        if size >= min_bytes:
            return payloads
    raise AssertionError("not enough generated data")


def make_output(tmp_path: Path, url: str, bucket: str, **extra: Any) -> S3Output:
    config = S3OutputConfig.model_validate(s3_output(url, bucket, **extra))
    context = OutputContext("archive", tmp_path, DeadLetterStore(tmp_path / "dl"), SystemClock(), "web-1")
    return S3Output(config, context)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DAEMON_ENV.items():
        monkeypatch.setenv(name, value)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def capture_into(sent: list[tuple[str, bytes]]) -> Any:
    """A before-send hook that records each request's Content-MD5 header and body."""
    def capture(request: Any, **_: Any) -> None:
        md5 = request.headers.get("Content-MD5", b"")
        body = request.body.getvalue() if hasattr(request.body, "getvalue") else bytes(request.body or b"")
        sent.append((md5.decode() if isinstance(md5, bytes) else md5, body))
    return capture


MULTIPART = {"store_as": "json", "multipart_threshold": 1024, "part_size": 5 << 20,
             "storage_class": "STANDARD_IA", "server_side_encryption": "AES256"}


def test_multipart_upload_in_parts_with_md5_on_every_part(tmp_path, s3, client, bucket, aws_env):
    payloads = big_payloads(11 << 20)
    chunk = make_chunk(tmp_path, payloads)
    output = make_output(tmp_path, s3.url, bucket, **MULTIPART)
    sent: list[tuple[str, bytes]] = []

    async def go() -> None:
        await output.start()
        (await output.client()).meta.events.register("before-send.s3.UploadPart", capture_into(sent))
        await output.write(chunk)
        await output.close()

    run(go())
    key = output.key(chunk)
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].endswith('-3"')  # 11 MiB in 5 MiB parts
    assert (head["StorageClass"], head["ServerSideEncryption"]) == ("STANDARD_IA", "AES256")
    assert head["ContentType"] == "application/x-ndjson"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(payloads)
    assert len(sent) == 3 and all(md5 == content_md5(body) for md5, body in sent)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_failed_or_cancelled_multipart_upload_is_aborted_and_a_retry_completes(tmp_path, s3, client, bucket,
                                                                               aws_env):
    chunk = make_chunk(tmp_path, big_payloads(11 << 20))
    output = make_output(tmp_path, s3.url, bucket, **MULTIPART)

    async def go() -> None:
        await output.start()
        real = await output.client()
        upload_part = real.upload_part
        calls = 0

        async def failing_second_part(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise ClientError(s3_error("InternalError", 500, "boom"), "UploadPart")
            return await upload_part(**kwargs)

        real.upload_part = failing_second_part  # type: ignore[method-assign]
        with pytest.raises(RetryableError, match="InternalError"):
            await output.write(chunk)
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

        stuck = asyncio.Event()

        async def hanging_part(**kwargs: Any) -> Any:
            stuck.set()
            await asyncio.Event().wait()

        real.upload_part = hanging_part  # type: ignore[method-assign]
        task = asyncio.create_task(output.write(chunk))
        await stuck.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

        real.upload_part = upload_part  # type: ignore[method-assign]
        await output.write(chunk)
        await output.close()

    run(go())
    assert list_keys(client, bucket) == [output.key(chunk)]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_put_object_carries_content_md5_and_a_rewrite_overwrites_the_same_object(tmp_path, s3, client, bucket,
                                                                                  aws_env):
    payloads = [b"".join(generator.lines(200, max_chars=500))]
    chunk = make_chunk(tmp_path, payloads)
    output = make_output(tmp_path, s3.url, bucket, store_as="gzip")
    sent: list[tuple[str, bytes]] = []

    async def go() -> None:
        await output.start()
        (await output.client()).meta.events.register("before-send.s3.PutObject", capture_into(sent))
        await output.write(chunk)
        first = client.head_object(Bucket=bucket, Key=output.key(chunk))["ETag"]
        await output.write(chunk)  # a retry after a lost ack
        assert client.head_object(Bucket=bucket, Key=output.key(chunk))["ETag"] == first  # same bytes
        await output.close()

    run(go())
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0][0] == content_md5(sent[0][1])
    assert list(read_objects(client, bucket).values()) == [[orjson.loads(x) for x in payloads[0].splitlines()]]
