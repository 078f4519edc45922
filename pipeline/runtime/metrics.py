"""Prometheus exposition of a status snapshot (prometheus-client formats; we only map names)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, Any]]

OUTPUT_COUNTERS = {
    "delivered_records": "Records delivered",
    "delivered_chunks": "Chunks delivered",
    "failed_attempts": "Delivery attempts that failed (each is retried or set aside)",
    "chunk_retries": "Failed deliveries of a chunk that are retried after a backoff",
    "rejected_records": "Records the destination refused one by one, written to the dead-letter store",
    "dead_chunks": "Chunks set aside in dead/ after retries",
    "dropped_chunks": "Chunks dropped by overflow_action = drop_oldest_chunk",
}
OUTPUT_GAUGES = {
    "buffer_bytes": "Bytes in this output's buffer",
    "buffer_limit_bytes": "total_limit_bytes of this output's buffer",
    "chunks": "Chunks staged, queued or in flight",
    "last_success": "Unix time of the last delivered chunk",
    "last_error_time": "Unix time of the last delivery error",
}


class SnapshotCollector(Collector):
    """Turns the snapshot into metric families at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yield every logferry metric."""
        snap = self.snapshot()
        yield from _source_metrics(snap["sources"])
        yield from _output_metrics(snap["outputs"])
        yield from _transform_metrics(snap.get("transforms", {}))
        yield from _parse_worker_metrics(snap.get("parse_workers", {}))
        healthy = GaugeMetricFamily("logferry_healthy", "1 when /health reports no problem")
        healthy.add_metric([], 1.0 if snap["healthy"] else 0.0)
        yield healthy
        paused = GaugeMetricFamily("logferry_sources_paused", "1 while a full buffer holds the sources back")
        paused.add_metric([], 1.0 if snap["paused"] else 0.0)
        yield paused


def _source_metrics(sources: dict[str, Any]) -> Iterator[Metric]:
    records = CounterMetricFamily("logferry_source_records", "Records read and committed", labels=["source"])
    dead = CounterMetricFamily("logferry_source_dead_letters", "Lines sent to the dead-letter store",
                               labels=["source"])
    lag = GaugeMetricFamily("logferry_file_lag_bytes", "Bytes written but not yet committed",
                            labels=["source", "path"])
    stalled = GaugeMetricFamily("logferry_file_stalled", "1 when a file grows but its position is stuck",
                                labels=["source", "path"])
    unrouted = CounterMetricFamily("logferry_source_unrouted_records",
                                   "Records dropped because their tag matches no output", labels=["source"])
    unreadable = GaugeMetricFamily("logferry_unreadable_files", "Matched files the daemon cannot read",
                                   labels=["source"])
    consumer_lag = GaugeMetricFamily("logferry_kafka_consumer_lag", "Messages on the broker not yet in the buffers",
                                     labels=["source", "topic", "partition"])
    for name, src in sources.items():
        records.add_metric([name], src["records"])
        dead.add_metric([name], src["dead_lines"])
        unrouted.add_metric([name], src.get("unrouted_records", 0))
        unreadable.add_metric([name], len(src.get("unreadable", [])))
        for p in src.get("partitions", []):
            if p["lag"] is not None:
                consumer_lag.add_metric([name, p["topic"], str(p["partition"])], p["lag"])
        for f in src["files"]:
            lag.add_metric([name, f["path"]], f["lag_bytes"])
            stalled.add_metric([name, f["path"]], 1.0 if f["stalled"] else 0.0)
    yield from (records, dead, unrouted, lag, stalled, unreadable, consumer_lag)
    yield from _network_metrics(sources)


NETWORK_COUNTERS = {
    "connections_accepted": "Connections accepted",
    "connections_refused": "Connections refused at max_connections",
    "records": "Records received and committed",
    "bytes": "Bytes received",
    "acks": "Acknowledgements sent",
    "resent_chunks": "Resent chunks acknowledged again without storing their records twice",
    "refused_handshakes": "Handshakes refused (wrong shared_key, user or password; no PING)",
    "bad_input": "Connections closed for bad input (not msgpack, truncated, oversized)",
}


def _network_metrics(sources: dict[str, Any]) -> Iterator[Metric]:
    """Counters of the sources that listen on the network (forward): absent when there is none."""
    network = {name: src["network"] for name, src in sources.items() if "network" in src}
    if not network:
        return
    for key, doc in NETWORK_COUNTERS.items():
        family = CounterMetricFamily(f"logferry_source_network_{key}", doc, labels=["source"])
        for name, stats in network.items():
            family.add_metric([name], stats[key])
        yield family
    gauge = GaugeMetricFamily("logferry_source_network_connections", "Connections open now", labels=["source"])
    for name, stats in network.items():
        gauge.add_metric([name], stats["connections"])
    yield gauge


def _output_metrics(outputs: dict[str, Any]) -> Iterator[Metric]:
    for key, doc in OUTPUT_COUNTERS.items():
        family = CounterMetricFamily(f"logferry_output_{key}", doc, labels=["output"])
        for name, out in outputs.items():
            family.add_metric([name], out[key])
        yield family
    for key, doc in OUTPUT_GAUGES.items():
        metric = f"logferry_output_{key}_timestamp_seconds" if key.startswith("last_") else f"logferry_output_{key}"
        gauge = GaugeMetricFamily(metric, doc, labels=["output"])
        for name, out in outputs.items():
            if out[key] is not None:
                gauge.add_metric([name], out[key])
        yield gauge


def _transform_metrics(transforms: dict[str, Any]) -> Iterator[Metric]:
    """Redactions per detector; cost records and USD per model alias (bounded: aliases and ``other``)."""
    redactions = CounterMetricFamily("logferry_transform_redactions", "Values redacted, per detector",
                                     labels=["transform", "detector"])
    redacted = CounterMetricFamily("logferry_transform_records_redacted", "Records with at least one redaction",
                                   labels=["transform"])
    families = {key: CounterMetricFamily(f"logferry_transform_cost_{key}", doc, labels=["transform", "model"])
                for key, doc in (("records", "Records seen by a cost transform, per model alias"),
                                 ("unpriced", "Records without a price or token counts, per model alias"),
                                 ("usd", "USD added up from cost_usd, per model alias"))}
    for name, stats in transforms.items():
        if stats["type"] == "redact":
            redacted.add_metric([name], stats["records_redacted"])
            for detector, count in stats["redactions"].items():
                redactions.add_metric([name, detector], count)
        elif stats["type"] == "cost":
            for key, source in (("records", "records"), ("unpriced", "unpriced"), ("usd", "cost_usd")):
                for model, value in stats[source].items():
                    families[key].add_metric([name, model], value)
    yield from (redactions, redacted, *families.values())


def _parse_worker_metrics(workers: dict[str, Any]) -> Iterator[Metric]:
    """Parse workers alive (of ``parse_workers``), and blocks parsed by them or on the event loop."""
    if not workers:
        return
    alive = GaugeMetricFamily("logferry_parse_workers_alive", "Parse worker processes running")
    alive.add_metric([], workers["alive"])
    blocks = CounterMetricFamily("logferry_parse_blocks", "Blocks parsed, by where", labels=["where"])
    blocks.add_metric(["worker"], workers["blocks_in_workers"])
    blocks.add_metric(["loop"], workers["blocks_on_loop"])
    yield from (alive, blocks)


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text format of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
