"""Enrichment: the fields added to every record, pre-serialised once per batch."""

from __future__ import annotations

import time
from typing import Any

import orjson

from pipeline.config import EnrichConfig, effective_hostname


def iso_millis(epoch: float) -> str:
    """ISO-8601 UTC with millisecond precision.

    >>> iso_millis(1795000000.1234)
    '2026-11-18T11:06:40.123Z'
    """
    whole = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((epoch - whole) * 1000):03d}Z"


class Enricher:
    """Builds the added fields: host name, ingest time, tag and static fields."""

    def __init__(self, config: EnrichConfig) -> None:
        self.config = config
        static: dict[str, Any] = dict(config.fields)
        if config.hostname_key:
            static[config.hostname_key] = effective_hostname(config)
        self.static = static
        self.keys = frozenset([*static, *(k for k in (config.ingested_at_key, config.tag_key) if k)])

    def fields(self, tag: str, now: float) -> dict[str, Any]:
        """The added fields for a batch read at ``now`` from a source tagged ``tag``."""
        added = dict(self.static)
        if self.config.ingested_at_key:
            added[self.config.ingested_at_key] = iso_millis(now)
        if self.config.tag_key:
            added[self.config.tag_key] = tag
        return added

    @staticmethod
    def suffix(added: dict[str, Any]) -> bytes:
        """``,"k":v,…}`` plus newline: spliced in place of a record's closing brace.

        >>> Enricher.suffix({"hostname": "h"})
        b',"hostname":"h"}\\n'
        """
        if not added:
            return b"}\n"
        return b"," + orjson.dumps(added)[1:] + b"\n"
