"""The embedded development configuration: everything under ``./var``, no servers needed."""

DEV_CONFIG = """
# logferry --dev: tails ./var/log/ai-agent/*.log, writes local files under ./var.
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
"""
