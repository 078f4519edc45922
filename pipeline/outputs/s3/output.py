"""S3Output: one object per chunk, date-partitioned by the chunk's time key (td-agent's out_s3).

Delivery guarantee: exactly once per chunk, across retries, crashes and replays. The
object key is a pure function of the chunk's time key and id (:mod:`.keys`), and a
chunk's id never changes; so a chunk uploaded again (a timeout whose request did land,
a ``kill -9`` before the ack, ``logferry replay``) overwrites its own object with the
same bytes, and never touches another chunk's. S3 writes an object whole or not at all.

Upload: the chunk is encoded in a worker thread (:mod:`.encoder`), then sent with
``put_object``, or, from ``multipart_threshold`` bytes on, in ``part_size`` parts. Every
request carries ``Content-MD5``, so S3 rejects a body damaged on the way. A failed
multipart upload is aborted so no parts are left behind (if the abort fails too, a
warning names the upload; a bucket lifecycle rule ``AbortIncompleteMultipartUpload``
catches those).

Errors: every botocore error (HTTP errors, connection failures, timeouts, missing
credentials) becomes a :class:`~pipeline.errors.RetryableError` whose message names the
S3 error code and what it usually means; the flusher retries with the buffer's backoff
and sets the chunk aside in ``dead/`` after ``retry_limit``. Credentials come from the
standard AWS chain and are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from pipeline.buffer.chunk import Chunk
from pipeline.errors import RetryableError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.s3.config import S3OutputConfig
from pipeline.outputs.s3.encoder import Body, Part, content_headers, encode, split
from pipeline.outputs.s3.keys import KeyBuilder

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("logferry.output.s3")
T = TypeVar("T")
MAX_PARTS = 10_000  # S3's limit per multipart upload
#: The bucket check at start is bounded tighter than uploads: the sources wait for it.
START_CHECK_TIMEOUT = 15.0

#: What an S3 error code usually means, for log lines and dead-letter reasons.
HINTS = {
    "NoSuchBucket": "the bucket does not exist (create it; create_bucket = true does so at start, for development)",
    "AccessDenied": "the credentials are valid but lack permission (s3:PutObject on the bucket; "
    "kms:GenerateDataKey with aws:kms)",
    "InvalidAccessKeyId": "bad credentials: the access key id is unknown to the endpoint",
    "SignatureDoesNotMatch": "bad credentials: the secret access key does not match the access key id",
    "ExpiredToken": "the session credentials have expired",
    "InvalidToken": "the session token is malformed or invalid",
    "PermanentRedirect": "the bucket is in another region than the one configured",
    "AuthorizationHeaderMalformed": "the configured region is not the bucket's",
    "SlowDown": "S3 is throttling requests",
    "ServiceUnavailable": "S3 is temporarily unavailable",
    "InternalError": "S3 had an internal error",
    "BadDigest": "the body was damaged on the way (Content-MD5 mismatch)",
    "KMS.NotFoundException": "the KMS key does not exist",
    "KMS.DisabledException": "the KMS key is disabled",
}
#: head_bucket has no response body: its errors carry only the HTTP status.
HEAD_CODES = {"404": "NoSuchBucket", "403": "Forbidden", "400": "BadRequest", "301": "PermanentRedirect"}
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"})
#: At DEBUG these log every request's headers, session token included: kept at INFO unless set on purpose.
_CLIENT_LOGGERS = ("botocore", "aiobotocore")


class S3Output:
    """Uploads each chunk as one object: ``{prefix}{hostname}-{time}-{chunk_id}.{ext}`` (see :mod:`.keys`)."""

    def __init__(self, config: S3OutputConfig, context: OutputContext) -> None:
        self.config = config
        self.context = context
        self.keys = KeyBuilder(config.path, context.hostname, config.store_as, config.object_key_format)
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        self._connecting = asyncio.Lock()
        self.start_error: str | None = None  # what the bucket check at start found wrong (shown by status)
        for name in _CLIENT_LOGGERS:
            client_log = logging.getLogger(name)
            if client_log.level == logging.NOTSET:
                client_log.setLevel(logging.INFO)  # never log credentials, even with log_level = "debug"

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the client and check the bucket; log what is wrong (never raise): chunks stay buffered.

        The check is bounded by ``START_CHECK_TIMEOUT`` (or ``request_timeout`` if shorter).
        What went wrong is also kept in ``start_error``, for status until an upload succeeds.
        """
        where = f"bucket={self.config.bucket} region={self.config.region} endpoint={self.config.endpoint_url or 'AWS'}"
        deadline = min(self.config.request_timeout, START_CHECK_TIMEOUT)
        self.start_error = None
        try:
            client = await self.client()
            async with asyncio.timeout(deadline):
                ready = await self._check_bucket(client)
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            self.start_error = f"cannot reach bucket {self.config.bucket}: {self._describe(exc, deadline)}"
            log.error("s3 output cannot reach the bucket output=%s %s: %s; chunks stay buffered and are retried",
                      self.context.name, where, self._describe(exc, deadline))
            return
        if ready:
            log.info("s3 output ready output=%s %s", self.context.name, where)

    async def close(self) -> None:
        """Close the client and its connections."""
        self._client = None
        await self._stack.aclose()

    async def client(self) -> S3Client:
        """The S3 client, created on first use (credentials resolve lazily, at the first request)."""
        async with self._connecting:
            if self._client is None:
                self._client = await self._stack.enter_async_context(
                    get_session().create_client(
                        "s3", region_name=self.config.region, endpoint_url=self.config.endpoint_url,
                        config=self._client_config(),
                    )
                )
            return self._client

    def _client_config(self) -> AioConfig:
        cfg = self.config
        return AioConfig(
            s3={"addressing_style": cfg.addressing_style},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
            max_pool_connections=max(10, cfg.buffer.workers),
            # Our own Content-MD5 protects every body; no second (CRC) checksum on top.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_appid="logferry",
        )

    # -- the bucket check at start -------------------------------------------------------

    async def _check_bucket(self, client: S3Client) -> bool:
        """True if the bucket is there and ours to use; else log why and return False."""
        try:
            await self._call(client.head_bucket(Bucket=self.config.bucket))
            return True
        except ClientError as exc:
            code = error_code(exc)
            if code == "NoSuchBucket" and self.config.create_bucket:
                await self._create_bucket(client)
                return True
            if code == "Forbidden":
                return await self._explain_forbidden(client)
            self.start_error = f"bucket check failed for {self.config.bucket}: {describe(exc)}"
            log.error("s3 output: bucket check failed output=%s bucket=%s: %s", self.context.name,
                      self.config.bucket, describe(exc))
            return False

    async def _create_bucket(self, client: S3Client) -> None:
        region = self.config.region
        if region == "us-east-1":
            await self._call(client.create_bucket(Bucket=self.config.bucket))
        else:
            await self._call(client.create_bucket(
                Bucket=self.config.bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            ))
        log.warning("s3 output created bucket output=%s bucket=%s region=%s (create_bucket = true: development only)",
                    self.context.name, self.config.bucket, region)

    async def _explain_forbidden(self, client: S3Client) -> bool:
        """head_bucket's 403 has no body: ask again with a request whose error names the cause."""
        try:
            await self._call(client.list_objects_v2(Bucket=self.config.bucket, MaxKeys=1))
        except ClientError as exc:
            code = error_code(exc)
            if code in CREDENTIAL_CODES:
                self.start_error = f"bad credentials for bucket {self.config.bucket}: {describe(exc)}"
                log.error("s3 output: bad credentials output=%s bucket=%s: %s", self.context.name,
                          self.config.bucket, describe(exc))
                return False
            log.warning("s3 output: cannot check bucket output=%s bucket=%s: %s; fine for write-only credentials "
                        "(s3:PutObject only), else every upload will fail the same way", self.context.name,
                        self.config.bucket, describe(exc))
        return True

    # -- delivery ------------------------------------------------------------------------

    def key(self, chunk: Chunk) -> str:
        """The object key of a chunk."""
        return self.keys.key(chunk.timekey, chunk.chunk_id)

    async def write(self, chunk: Chunk) -> None:
        """Upload the chunk as one object (overwriting its own earlier upload, if any)."""
        key = self.key(chunk)
        body = await asyncio.to_thread(_encode_chunk, chunk, self.config)
        try:
            client = await self.client()
            if len(body.data) >= self.config.multipart_threshold:
                await self._put_multipart(client, key, body, chunk)
            else:
                await self._call(client.put_object(
                    Bucket=self.config.bucket, Key=key, Body=body.data, ContentMD5=body.content_md5,
                    **self._object_args(chunk),
                ))
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            where = f"s3://{self.config.bucket}/{key}"
            raise RetryableError(f"S3 upload of {where} failed: {self._describe(exc)}") from exc
        log.debug("uploaded output=%s chunk=%s key=%s bytes=%d raw_bytes=%d records=%d", self.context.name,
                  chunk.name, key, len(body.data), body.raw_size, chunk.records)

    def _object_args(self, chunk: Chunk) -> dict[str, Any]:
        """Headers of the object: type, storage class, encryption, and where it came from."""
        cfg = self.config
        args: dict[str, Any] = {
            **content_headers(cfg.store_as, cfg.content_encoding),
            "Metadata": {"chunk-id": chunk.chunk_id, "records": str(chunk.records)},
        }
        if cfg.storage_class is not None:
            args["StorageClass"] = cfg.storage_class
        if cfg.server_side_encryption is not None:
            args["ServerSideEncryption"] = cfg.server_side_encryption
        if cfg.kms_key_id is not None:
            args["SSEKMSKeyId"] = cfg.kms_key_id
        return args

    async def _put_multipart(self, client: S3Client, key: str, body: Body, chunk: Chunk) -> None:
        """Upload in parts; abort the upload on any failure (or cancellation) so no parts are left."""
        parts = await asyncio.to_thread(split, body.data, self.part_size(len(body.data)))
        created = await self._call(
            client.create_multipart_upload(Bucket=self.config.bucket, Key=key, **self._object_args(chunk))
        )
        upload_id = created["UploadId"]
        try:
            done: list[CompletedPartTypeDef] = [
                {"PartNumber": part.number, "ETag": await self._upload_part(client, key, upload_id, body.data, part)}
                for part in parts
            ]
            await self._call(client.complete_multipart_upload(
                Bucket=self.config.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done},
            ))
        except BaseException:
            await self._abort(client, key, upload_id)
            raise

    async def _upload_part(self, client: S3Client, key: str, upload_id: str, data: bytes, part: Part) -> str:
        response = await self._call(client.upload_part(
            Bucket=self.config.bucket, Key=key, UploadId=upload_id, PartNumber=part.number,
            Body=data[part.start : part.end], ContentMD5=part.content_md5,
        ))
        return response["ETag"]

    async def _abort(self, client: S3Client, key: str, upload_id: str) -> None:
        try:
            await self._call(client.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=upload_id))
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            log.warning("s3 output could not abort a failed multipart upload output=%s key=%s upload_id=%s: %s; "
                        "its parts stay until a lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                        self.context.name, key, upload_id, self._describe(exc))

    async def _call(self, request: Awaitable[T]) -> T:
        """Await one S3 request within ``request_timeout``.

        The client's own timeouts do not cover every wait: botocore sends bodies with
        ``Expect: 100-continue``, and aiohttp waits for the ``100 Continue`` without a
        timeout, so an endpoint that accepts the connection and then hangs would hold a
        worker forever.
        """
        async with asyncio.timeout(self.config.request_timeout):
            return await request

    def _describe(self, exc: ClientError | BotoCoreError | TimeoutError, deadline: float | None = None) -> str:
        if isinstance(exc, TimeoutError):
            return (f"TimeoutError: no answer within {deadline or self.config.request_timeout:g}s "
                    "(the endpoint accepted the connection but did not respond)")
        return describe(exc)

    def part_size(self, size: int) -> int:
        """``part_size``, raised if the body would need more than S3's 10,000 parts."""
        return max(self.config.part_size, math.ceil(size / MAX_PARTS))


def _encode_chunk(chunk: Chunk, config: S3OutputConfig) -> Body:
    """Read and encode a chunk (blocking: runs in a worker thread)."""
    return encode(chunk.payloads(), config.store_as, config.compression_level)


def error_code(exc: ClientError) -> str:
    """The S3 error code of a ClientError (head requests' bare statuses named, e.g. "404" → NoSuchBucket)."""
    code = str(exc.response.get("Error", {}).get("Code", "")) or "Unknown"
    return HEAD_CODES.get(code, code)


def describe(exc: ClientError | BotoCoreError) -> str:
    """A one-line account of a botocore error: the S3 error code and what it usually means."""
    if isinstance(exc, ClientError):
        return _describe_client_error(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (f"{type(exc).__name__}: no usable AWS credentials in the standard chain (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, container or instance role)")
    return f"{type(exc).__name__}: {exc}"


def _describe_client_error(exc: ClientError) -> str:
    code = error_code(exc)
    meta = exc.response.get("ResponseMetadata", {})
    error = exc.response.get("Error", {})
    text = f"{code} (HTTP {meta.get('HTTPStatusCode', '?')})"
    if error.get("Message") and not str(error.get("Code", "")).isdigit():  # a bare status has only its reason
        text += f": {error['Message']}"
    hint = HINTS.get(code)
    if code == "Forbidden":
        hint = "bad credentials or no permission on the bucket"
    if code == "PermanentRedirect":
        region = meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")
        hint = f"the bucket is in region {region}: set region" if region else HINTS[code]
    return f"{text} — {hint}" if hint else text
