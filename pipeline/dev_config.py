"""The embedded development configuration: everything under ``./var``, S3 on a local moto server."""

DEV_S3_PORT = 9429

DEV_CONFIG = f"""
# logferry run --dev: tails ./var/log/ai-agent/*.log; writes ./var/out/ and, when
# scripts/dev-run has started it, a local S3 server on 127.0.0.1:{DEV_S3_PORT}.
state_dir = "./var/state"
shutdown_timeout = 5.0

[enrich]
tag_key = "tag"

[sources.agent]
type = "tail"
paths = ["./var/log/ai-agent/*.log"]
tag = "ai.interactions"
rescan_interval = 2.0

[outputs.debug]
type = "file"
match = ["ai.**"]
path = "./var/out/interactions-%Y%m%d-%H.jsonl"

[outputs.debug.buffer]
flush_interval = 1.0

[outputs.archive]
type = "s3"
match = ["ai.**"]
bucket = "ai-log-archive"
region = "us-east-1"
path = "interactions/%Y/%m/%d/"
store_as = "gzip"
endpoint_url = "http://127.0.0.1:{DEV_S3_PORT}"
addressing_style = "path"
create_bucket = true

[outputs.archive.buffer]
flush_interval = 10.0
retry_wait = 2.0
"""
