"""The composable index template installed at start: mappings for interaction records.

Fields a record does not have cost nothing; fields not listed are mapped dynamically.
The event time field (``time_key``) takes epoch seconds (fractions allowed) or ISO-8601.
The fields the daemon adds to every record (``[enrich]``) are mapped under the names
configured there (:class:`AddedFields`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.outputs.bulk.config import BulkIndexConfig

if TYPE_CHECKING:  # pipeline.config imports this package's config: no import at run time
    from pipeline.config import EnrichConfig

_KEYWORD = {"type": "keyword"}
_LONG = {"type": "long"}


@dataclass(frozen=True)
class AddedFields:
    """Names of the fields enrichment adds to every record; "" for one it leaves out.

    The defaults are ``[enrich]``'s, except ``tag`` (left out there by default; mapping a field
    no record carries costs nothing), so a template built without the enrich settings maps what
    it always did.
    """

    hostname: str = "hostname"
    ingested_at: str = "ingested_at"
    tag: str = "tag"

    @classmethod
    def of(cls, enrich: EnrichConfig) -> AddedFields:
        """The names ``[enrich]`` configures (``hostname_key``, ``ingested_at_key``, ``tag_key``)."""
        return cls(hostname=enrich.hostname_key, ingested_at=enrich.ingested_at_key, tag=enrich.tag_key)

    def mappings(self) -> dict[str, Any]:
        """Mappings of the added fields that are not left out.

        >>> AddedFields(hostname="host", tag="").mappings()
        {'host': {'type': 'keyword'}, 'ingested_at': {'type': 'date'}}
        """
        fields = ((self.hostname, _KEYWORD), (self.ingested_at, {"type": "date"}), (self.tag, _KEYWORD))
        return {name: mapping for name, mapping in fields if name}


DEFAULT_ADDED_FIELDS = AddedFields()


def interaction_mappings(time_key: str = "timestamp", added: AddedFields = DEFAULT_ADDED_FIELDS) -> dict[str, Any]:
    """Mappings of the fields an interaction record usually carries, and of those enrichment adds.

    >>> m = interaction_mappings("ts")["properties"]
    >>> m["ts"]["format"], m["tokens"]["type"], m["model"]["type"], m["hostname"]["type"]
    ('epoch_second||strict_date_optional_time', 'long', 'keyword', 'keyword')
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
        "request_id": _KEYWORD,
        "type": _KEYWORD,
    }
    if time_key != "timestamp":
        properties[time_key] = properties.pop("timestamp")
    # Last: enrichment writes these fields into every record, whatever the record had under that name.
    properties.update(added.mappings())
    return {"dynamic": True, "properties": properties}


def index_template(config: BulkIndexConfig, added: AddedFields = DEFAULT_ADDED_FIELDS) -> dict[str, Any]:
    """Keyword arguments of ``indices.put_index_template`` for this output.

    ``added``: the names of the enriched fields (``AddedFields.of(settings.enrich)``).
    """
    mappings = interaction_mappings(config.time_key, added)
    template: dict[str, Any] = {
        "name": config.effective_template_name,
        "index_patterns": [config.effective_template_pattern],
        "priority": config.template_priority,
        "template": {"mappings": mappings},
        "meta": {"managed_by": "logferry", "description": "interaction records shipped by logferry"},
    }
    if config.data_stream:  # the index name is a data stream's: created on the first write, rolled over by ES
        template["data_stream"] = {}
        mappings["properties"]["@timestamp"] = {"type": "date"}
    return template
