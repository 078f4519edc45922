"""S3 object keys: date-partitioned by the chunk's time key, one key per chunk id, checked formats."""

from __future__ import annotations

import re

import pytest

from pipeline.config import settings_from_dict
from pipeline.errors import ConfigError
from pipeline.outputs.s3.config import S3OutputConfig
from pipeline.outputs.s3.keys import KeyBuilder

DAY = 1_794_960_000  # 2026-11-18T00:00:00Z
HOUR = 3600


def builder(store_as: str = "gzip", path: str = "interactions/%Y/%m/%d/", **kw: str) -> KeyBuilder:
    return KeyBuilder(path, kw.pop("hostname", "web-1"), store_as, **kw)


def test_default_key_is_prefix_host_time_and_chunk_id() -> None:
    key = builder().key(DAY + 11 * HOUR, "3f2a9c0d1e4b5a69")
    assert key == "interactions/2026/11/18/web-1-20261118T110000Z-3f2a9c0d1e4b5a69.jsonl.gz"


@pytest.mark.parametrize(("store_as", "ext"), [("json", ".jsonl"), ("gzip", ".jsonl.gz"), ("zstd", ".jsonl.zst")])
def test_extension_follows_store_as(store_as: str, ext: str) -> None:
    assert builder(store_as).key(DAY, "ab").endswith("-ab" + ext)


def test_prefix_takes_the_time_key_in_utc_across_a_day_boundary() -> None:
    keys = builder(path="interactions/%Y/%m/%d/%H/")
    assert keys.key(DAY + 23 * HOUR, "a").startswith("interactions/2026/11/18/23/web-1-20261118T230000Z-")
    assert keys.key(DAY + 24 * HOUR, "a").startswith("interactions/2026/11/19/00/web-1-20261119T000000Z-")


def test_same_chunk_same_key_and_other_chunks_other_keys() -> None:
    keys = builder()
    assert keys.key(DAY, "c1") == keys.key(DAY, "c1")
    assert len({keys.key(DAY, f"c{n}") for n in range(100)}) == 100


def test_empty_path_and_slash_in_hostname() -> None:
    assert builder(path="", hostname="pod/a").key(DAY, "x") == "pod_a-20261118T000000Z-x.jsonl.gz"


def test_custom_format_with_every_placeholder() -> None:
    keys = builder(fmt="{path}{timekey}/{time}/{hostname}/{chunk_id}.{ext}")
    assert keys.key(DAY, "x") == f"interactions/2026/11/18/{DAY}/20261118T000000Z/web-1/x.jsonl.gz"


def s3(**extra: object) -> dict[str, object]:
    return {"type": "s3", "bucket": "archive", **extra}


def settings(**extra: object) -> object:
    return settings_from_dict({
        "sources": {"agent": {"type": "tail", "paths": ["/tmp/*.log"], "tag": "ai"}},
        "outputs": {"archive": s3(**extra)},
    })


@pytest.mark.parametrize(("fmt", "message"), [
    ("{path}{hostname}.{ext}", "must contain {chunk_id}"),
    ("{path}{host}-{chunk_id}", "unknown placeholder {host}"),
    ("{path}{chunk_id", "invalid format"),
])
def test_bad_object_key_formats_fail_at_load_time(fmt: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        settings(object_key_format=fmt)
    assert "outputs.archive.object_key_format" in str(info.value)


def test_config_defaults_and_checks() -> None:
    cfg = S3OutputConfig.model_validate(s3())
    assert (cfg.store_as, cfg.multipart_threshold, cfg.part_size, cfg.create_bucket) == ("gzip", 64 << 20, 16 << 20,
                                                                                         False)
    with pytest.raises(ConfigError, match="kms_key_id needs"):
        settings(kms_key_id="arn:aws:kms:us-east-1:1:key/x")
    assert S3OutputConfig.model_validate(s3(server_side_encryption="aws:kms", kms_key_id="k")).kms_key_id == "k"
    with pytest.raises(ConfigError, match="outputs.archive.part_size"):
        settings(part_size=1024)  # S3 refuses parts under 5 MiB
    with pytest.raises(ConfigError, match="outputs.archive.endpoint_url"):
        settings(endpoint_url="localhost:9000")
    with pytest.raises(ConfigError, match="outputs.archive.storage_class"):
        settings(storage_class="COLD")
    assert S3OutputConfig.model_validate(s3(store_as="zstd", compression_level=19)).compression_level == 19
    with pytest.raises(ConfigError, match="compression_level for gzip must be 1 to 9"):
        settings(compression_level=12)
    with pytest.raises(ConfigError, match="compression_level needs"):
        settings(store_as="json", compression_level=1)
