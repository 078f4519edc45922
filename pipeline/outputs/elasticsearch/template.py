"""The composable index template installed at start: mappings for interaction records.

Fields a record does not have cost nothing; fields not listed are mapped dynamically.
The event time field (``time_key``) takes epoch seconds (fractions allowed) or ISO-8601.
"""

from __future__ import annotations

from typing import Any

from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig

_KEYWORD = {"type": "keyword"}
_LONG = {"type": "long"}


def interaction_mappings(time_key: str = "timestamp") -> dict[str, Any]:
    """Mappings of the fields an interaction record usually carries.

    >>> m = interaction_mappings("ts")["properties"]
    >>> m["ts"]["format"], m["tokens"]["type"], m["model"]["type"]
    ('epoch_second||strict_date_optional_time', 'long', 'keyword')
    """
    properties: dict[str, Any] = {
        "input": {"type": "text"},
        "output": {"type": "text"},
        "model": _KEYWORD,
        "tokens": _LONG,
        "prompt_tokens": _LONG,
        "completion_tokens": _LONG,
        "latency_ms": {"type": "float"},
        "timestamp": {"type": "date", "format": "epoch_second||strict_date_optional_time"},
        "ingested_at": {"type": "date"},
        "hostname": _KEYWORD,
        "tag": _KEYWORD,
        "request_id": _KEYWORD,
        "type": _KEYWORD,
    }
    if time_key != "timestamp":
        properties[time_key] = properties.pop("timestamp")
    return {"dynamic": True, "properties": properties}


def index_template(config: ElasticsearchOutputConfig) -> dict[str, Any]:
    """Keyword arguments of ``indices.put_index_template`` for this output."""
    return {
        "name": config.effective_template_name,
        "index_patterns": [config.effective_template_pattern],
        "priority": config.template_priority,
        "template": {"mappings": interaction_mappings(config.time_key)},
        "meta": {"managed_by": "logferry", "description": "interaction records shipped by logferry"},
    }
