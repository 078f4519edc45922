"""The index template maps the fields enrichment adds under the names ``[enrich]`` gives them."""

from __future__ import annotations

from typing import Any

from pipeline.config import EnrichConfig
from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig
from pipeline.outputs.elasticsearch.template import AddedFields, index_template
from pipeline.transforms.enrich import Enricher

KEYWORD, DATE = {"type": "keyword"}, {"type": "date"}
RECORD_FIELDS = {"input", "output", "model", "tokens", "prompt_tokens", "completion_tokens", "latency_ms",
                 "request_id", "type"}


def properties(enrich: EnrichConfig | None = None, **output: Any) -> dict[str, Any]:
    config = ElasticsearchOutputConfig(type="elasticsearch", hosts=["http://127.0.0.1:9200"],
                                       index="ai-%Y.%m.%d", **output)
    added = AddedFields() if enrich is None else AddedFields.of(enrich)
    found: dict[str, Any] = index_template(config, added)["template"]["mappings"]["properties"]
    return found


def test_without_the_enrich_settings_the_template_maps_what_it_always_did() -> None:
    mapped = properties()
    assert (mapped["hostname"], mapped["ingested_at"], mapped["tag"]) == (KEYWORD, DATE, KEYWORD)
    assert RECORD_FIELDS | {"timestamp", "hostname", "ingested_at", "tag"} == set(mapped)


def test_the_configured_names_are_mapped_and_the_default_ones_are_not() -> None:
    enrich = EnrichConfig(hostname_key="host", ingested_at_key="received_at", tag_key="route")
    mapped = properties(enrich)
    assert (mapped["host"], mapped["received_at"], mapped["route"]) == (KEYWORD, DATE, KEYWORD)
    assert not {"hostname", "ingested_at", "tag"} & set(mapped)
    assert RECORD_FIELDS | {"timestamp", "host", "received_at", "route"} == set(mapped)


def test_fields_left_out_of_enrichment_are_left_out_of_the_template() -> None:
    assert not {"hostname", "ingested_at", "tag"} & set(properties(EnrichConfig(hostname_key="", ingested_at_key="")))
    defaults = properties(EnrichConfig())  # [enrich] adds no tag unless tag_key is set
    assert "tag" not in defaults and defaults["hostname"] == KEYWORD and defaults["ingested_at"] == DATE


def test_the_template_maps_exactly_what_the_enricher_adds() -> None:
    for enrich in (EnrichConfig(), EnrichConfig(hostname_key="node", ingested_at_key="", tag_key="t"),
                   EnrichConfig(hostname_key="", ingested_at_key="seen", tag_key="")):
        added = Enricher(enrich).fields("ai.interactions", 1_795_000_000.0)
        assert set(added) == set(AddedFields.of(enrich).mappings())


def test_a_renamed_event_time_keeps_its_format_beside_renamed_enriched_fields() -> None:
    mapped = properties(EnrichConfig(ingested_at_key="received_at"), time_key="event_time")
    assert mapped["event_time"] == {"type": "date", "format": "epoch_second||strict_date_optional_time"}
    assert "timestamp" not in mapped and mapped["received_at"] == DATE
