"""Config of the S3 output."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from pipeline.configbase import MiB, OutputBase
from pipeline.outputs.s3.keys import DEFAULT_OBJECT_KEY_FORMAT, check_object_key_format

GiB = 1024 * MiB
#: S3's own bounds on a multipart upload's parts (all but the last part).
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB

StorageClass = Literal[
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER",
    "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS",
]  # not EXPRESS_ONEZONE: directory buckets take no Content-MD5
ServerSideEncryption = Literal["AES256", "aws:kms", "aws:kms:dsse"]
LEVELS = {"gzip": (1, 9), "zstd": (1, 22)}


class S3OutputConfig(OutputBase):
    """``type = "s3"``: one object per chunk, keyed by the chunk's time key and id.

    Credentials come from the standard AWS chain (environment, shared config and
    profile, container or instance role); they are never part of this config.
    """

    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, description="Bucket name.")
    region: str = Field("us-east-1", min_length=1, description="The bucket's region.")
    path: str = Field("", description="Key prefix; strftime placeholders take the chunk's time key (UTC).")
    object_key_format: str = Field(
        DEFAULT_OBJECT_KEY_FORMAT,
        description="Object key; placeholders {path} {hostname} {time} {timekey} {chunk_id} {ext}; "
        "{chunk_id} is required (it makes each chunk's key its own).",
    )
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); default: AWS.")
    addressing_style: Literal["auto", "virtual", "path"] = Field(
        "auto", description="path: http://host/bucket/key, needed by most S3-compatible servers."
    )
    store_as: Literal["json", "gzip", "zstd"] = Field(
        "gzip", description="json: .jsonl; gzip: .jsonl.gz; zstd: .jsonl.zst."
    )
    content_encoding: bool = Field(
        False,
        description="true: Content-Type application/x-ndjson + Content-Encoding gzip/zstd (HTTP clients then "
        "decompress on download); false: Content-Type application/gzip or application/zstd, as Fluentd's out_s3.",
    )
    compression_level: int | None = Field(
        None, description="gzip 1-9 (default 6), zstd 1-22 (default 3); lower is faster, higher is smaller."
    )
    storage_class: StorageClass | None = Field(None, description="Storage class; default: the bucket's.")
    server_side_encryption: ServerSideEncryption | None = Field(None, description="SSE-S3 or SSE-KMS.")
    kms_key_id: str | None = Field(None, description="KMS key for aws:kms; default: the AWS managed key.")
    multipart_threshold: int = Field(
        64 * MiB, ge=1, description="Objects of this many bytes (after compression) or more go up in parts."
    )
    part_size: int = Field(16 * MiB, ge=MIN_PART_SIZE, le=MAX_PART_SIZE, description="Bytes per multipart part.")
    create_bucket: bool = Field(False, description="Create the bucket at start if missing (development only).")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(60.0, gt=0, description="Seconds to wait for a response.")
    request_timeout: float = Field(
        300.0, gt=0, description="Deadline of one request as a whole (connect, send, answer, client retries): "
        "guards against an endpoint that accepts the connection and then says nothing."
    )
    max_attempts: int = Field(
        3, ge=1, le=20, description="Attempts per request inside the client; the buffer's retries come on top."
    )

    @field_validator("object_key_format")
    @classmethod
    def _key_format_is_safe(cls, value: str) -> str:
        check_object_key_format(value)
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _level_fits_store_as(self) -> Self:
        level, bounds = self.compression_level, LEVELS.get(self.store_as)
        if level is None:
            return self
        if bounds is None:
            raise ValueError('compression_level needs store_as = "gzip" or "zstd"')
        if not bounds[0] <= level <= bounds[1]:
            raise ValueError(f"compression_level for {self.store_as} must be {bounds[0]} to {bounds[1]}")
        return self

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> Self:
        if self.kms_key_id is not None and self.server_side_encryption not in ("aws:kms", "aws:kms:dsse"):
            raise ValueError('kms_key_id needs server_side_encryption = "aws:kms" (or "aws:kms:dsse")')
        return self
