"""kafka → logferry against a real Kafka 4.4.0 broker: exactly once through kill -9, dead letters, lag."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline import generator
from pipeline.outputs.records import hashed_id
from pipeline.sources.kafka.source import default_instance_id
from tests.conftest import new_daemon
from tests.support.daemon import Layout, Ledger, render_toml, wait_for
from tests.support.elasticsearch import access_for, all_documents, dropping_indices, free_port
from tests.support.kafka import KafkaBroker, KafkaCluster

pytestmark = pytest.mark.integration


def write_source_config(layout: Layout, kafka: KafkaBroker | KafkaCluster, topic: str, group: str,
                        output: dict[str, Any] | None = None, *, parse_workers: int = 0, file_too: bool = False,
                        **source: Any) -> None:
    """A kafka → file pipeline over ``layout`` (or kafka → ``output``, and the file output too if ``file_too``)."""
    buffer = {"flush_interval": 0.05, "retry_wait": 0.1, "retry_max_interval": 1.0}
    file = {"type": "file", "path": str(layout.out / "%Y%m%d-%H.jsonl"), "buffer": buffer}
    doc = {
        "state_dir": layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "parse_workers": parse_workers,
        "sources": {"bus": {"type": "kafka", "brokers": [kafka.bootstrap], "topics": [topic], "group_id": group,
                            "tag": "ai.interactions", **source}},
        "outputs": {"out": {**(output or file), "buffer": buffer}, **({"file": file} if file_too else {})},
    }
    layout.config.write_text(render_toml(doc))


def produce(kafka: KafkaBroker | KafkaCluster, topic: str, values: list[bytes], partitions: int = 1,
            pause_every: int = 0, delivered: dict[bytes, tuple[int, int]] | None = None, pause: float = 0.0) -> None:
    """Produce ``values`` round-robin over ``partitions`` (a flush and ``pause`` seconds every ``pause_every``
    messages); ``delivered`` gets each value's (partition, offset)."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5, "enable.idempotence": True})

    def note(error: Any, msg: Any) -> None:
        assert error is None, error
        if delivered is not None:
            delivered[msg.value()] = (msg.partition(), msg.offset())

    for n, value in enumerate(values):
        producer.produce(topic, value, partition=n % partitions, on_delivery=note)
        if pause_every and n % pause_every == 0:
            producer.flush(10)
            time.sleep(pause)
        producer.poll(0)
    assert producer.flush(30) == 0


PASSING_COORDINATOR_ERRORS = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                              KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT)


def group_offsets(kafka: KafkaBroker | KafkaCluster, topic: str, group: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition (-1001 where it has none); [] while the coordinator cannot
    say (NOT_COORDINATOR for a moment after a topic is deleted, say): the callers poll."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in found]
    except KafkaException as exc:
        if exc.args[0].code() not in PASSING_COORDINATOR_ERRORS:
            raise
        return []
    finally:
        consumer.close()


def arrived_at_least(layout: Layout, count: int) -> bool:
    return len(layout.records()) >= count


def test_sigkill_three_times_then_every_message_is_in_the_file_output_exactly_once(layout, daemon_factory, kafka):
    topic, group = f"bus-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=3)
    values = [line.rstrip(b"\n") for line in generator.lines(20_000, max_chars=600)]
    produce(kafka, topic, values[:14_000], partitions=3)
    live = threading.Thread(target=produce, args=(kafka, topic, values[14_000:], 3, 200))
    live.start()
    rng = random.Random(20261204)
    # Small reads make a kill land between a batch's commit and its offset's commit to the group.
    # A killed member keeps its partitions until its session times out: 6 s, not the default 45 s.
    write_source_config(layout, kafka, topic, group, max_batch_messages=300, session_timeout=6.0)
    for kill_at in sorted(rng.sample(range(1000, 19_000), 3)):
        daemon = new_daemon(layout, daemon_factory).start()
        wait_for(partial(arrived_at_least, layout, kill_at), what=f"{kill_at} records before the kill")
        daemon.kill()
    live.join(60)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(arrived_at_least, layout, len(values)), timeout=90, what="every record after the restarts")
        wait_for(lambda: sum(group_offsets(kafka, topic, group, 3)) == len(values), what="the group's offsets")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(len(values))], layout.records()).assert_exact()


def test_bad_messages_are_dead_lettered_with_topic_partition_offset_and_committed(layout, daemon_factory, kafka):
    topic, group = f"bad-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    good = [line.rstrip(b"\n") for line in generator.lines(20, max_chars=300)]
    pretty = orjson.dumps({"request_id": "pretty"}, option=orjson.OPT_INDENT_2)  # spans lines: re-encoded, kept
    values = [*good[:10], b"not json {", b'{"request_id": "\xff\xfe"}', pretty, b"", *good[10:]]
    produce(kafka, topic, values)
    write_source_config(layout, kafka, topic, group)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(arrived_at_least, layout, 21), what="the 20 good records and the pretty one")
        wait_for(lambda: len(layout.dead_letters()) == 3, what="the three bad messages")
        wait_for(lambda: group_offsets(kafka, topic, group, 1) == [len(values)], what="every offset committed")
        status = orjson.loads(layout.http("/status")[1])["sources"]["bus"]
        _, metrics = layout.http("/metrics")
        assert daemon.stop() == 0
    expected = [*(generator.request_id(1, n) for n in range(20)), "pretty"]
    Ledger.compare(expected, layout.records()).assert_exact()
    dead = {e["offset"]: e for e in layout.dead_letters()}
    assert sorted(dead) == [10, 11, 13]
    assert {e["path"] for e in dead.values()} == {f"kafka://{topic}/0"}, "the path names topic and partition"
    assert dead[10]["line"] == "not json {" and "invalid JSON" in dead[10]["reason"]
    assert dead[11]["reason"] == "invalid UTF-8" and "line_base64" in dead[11]
    assert dead[13]["reason"] == "empty line"
    [row] = status["partitions"]
    assert (row["topic"], row["partition"], row["committed"], row["lag"]) == (topic, 0, len(values), 0)
    assert f'logferry_kafka_consumer_lag{{partition="0",source="bus",topic="{topic}"}} 0.0' in metrics.decode()


def produce_in_transactions(kafka: KafkaBroker, topic: str, values: list[bytes], partitions: int, size: int) -> None:
    """Produce ``values`` round-robin over ``partitions`` in transactions of ``size`` messages, as logferry's kafka
    output does: each transaction leaves a commit marker in every partition it wrote."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    producer.init_transactions(30)
    for first in range(0, len(values), size):
        producer.begin_transaction()
        for n in range(first, min(first + size, len(values))):
            producer.produce(topic, values[n], partition=n % partitions)
        producer.commit_transaction(30)


def high_watermarks(kafka: KafkaBroker, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "watermarks"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


def test_a_topic_written_in_transactions_shows_no_lag_once_read_to_its_end(layout, daemon_factory, kafka):
    """Each transaction's commit marker takes an offset no consumer gets: the lag in status and metrics, and the
    group's offset (what monitoring tools measure), step over the last one once every message before it is
    stored. A restart from there skips nothing that comes after."""
    topic, group = f"tx-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=2)
    values = [line.rstrip(b"\n") for line in generator.lines(90, max_chars=300)]
    produce_in_transactions(kafka, topic, values[:60], partitions=2, size=20)
    write_source_config(layout, kafka, topic, group)

    def lags() -> tuple[int, list[int]]:
        status = layouts_status(layout)
        return status["lag"], [row["lag"] for row in status["partitions"]]

    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(arrived_at_least, layout, 60), what="the first 60 records")
        high = high_watermarks(kafka, topic, 2)
        assert high == [33, 33], "30 messages and 3 commit markers in each partition"
        wait_for(lambda: group_offsets(kafka, topic, group, 2) == high, what="the group past the last markers")
        assert lags() == (0, [0, 0])
        _, metrics = layout.http("/metrics")
        assert daemon.stop() == 0
    for part in (0, 1):
        assert f'logferry_kafka_consumer_lag{{partition="{part}",source="bus",topic="{topic}"}} 0.0' in metrics.decode()
    produce_in_transactions(kafka, topic, values[60:], partitions=2, size=30)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(arrived_at_least, layout, 90), what="the 30 records produced while it was stopped")
        wait_for(lambda: group_offsets(kafka, topic, group, 2) == [49, 49], what="the group past the new markers")
        assert lags() == (0, [0, 0])
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(90)], layout.records()).assert_exact()


def test_a_topic_deleted_and_created_again_is_read_from_its_start_not_from_the_old_topics_offsets(
        layout, daemon_factory, kafka):
    """Our saved positions belong to the topic they were read in (its id): the new topic under the same name, which
    already holds more messages than the old offsets, is read whole, even by a source that starts partitions new
    to its group at their end (``start_from = "latest"``)."""
    topic, group = f"again-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    values = [line.rstrip(b"\n") for line in generator.lines(110, max_chars=300)]
    kafka.create_topic(topic, partitions=2)
    produce(kafka, topic, values[:40], partitions=2)
    write_source_config(layout, kafka, topic, group)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: group_offsets(kafka, topic, group, 2) == [20, 20], what="the old topic read to its end")
        assert daemon.stop() == 0
    write_source_config(layout, kafka, topic, group, start_from="latest")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, what="the topic gone")
    kafka.create_topic(topic, partitions=2)
    produce(kafka, topic, values[40:], partitions=2)  # 35 a partition: past the old offsets (20)
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: group_offsets(kafka, topic, group, 2) == [35, 35], what="the new topic read to its end")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(110)], layout.records()).assert_exact()
    assert f"topic {topic} was deleted and created again" in daemon.log()


def test_an_offset_the_group_holds_from_an_earlier_topic_of_the_same_name_is_not_used(layout, daemon_factory, kafka):
    """The offsets a member commits name their topic's id. A topic deleted and created again while it was held can
    get the old topic's offsets (the revoke's commit racing the new topic): the new topic is still read whole."""
    topic, group = f"raced-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    values = [line.rstrip(b"\n") for line in generator.lines(110, max_chars=300)]
    kafka.create_topic(topic, partitions=2)
    produce(kafka, topic, values[:40], partitions=2)
    write_source_config(layout, kafka, topic, group, instance_id="")  # leaves the group at its stop: it is empty
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: group_offsets(kafka, topic, group, 2) == [20, 20], what="the old topic read to its end")
        assert daemon.stop() == 0
    old_id = orjson.loads((layout.state / "positions.json").read_bytes())["files"][0]["fingerprint"]
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, what="the topic gone")
    kafka.create_topic(topic, partitions=2)
    produce(kafka, topic, values[40:], partitions=2)
    late = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    try:  # what a revoke's commit landing on the new topic leaves
        late.commit(offsets=[TopicPartition(topic, p, 20, metadata=old_id) for p in (0, 1)], asynchronous=False)
    finally:
        late.close()
    (layout.state / "positions.json").unlink()  # nothing of our own to go by: only the group's offsets
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: group_offsets(kafka, topic, group, 2) == [35, 35], what="the new topic read to its end")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(110)], layout.records()).assert_exact()
    assert "is of an earlier topic of that name" in daemon.log()


def test_parse_workers_take_the_messages_and_keep_their_offsets_for_ids_and_dead_letters(layout, daemon_factory,
                                                                                         kafka, es_url):
    topic, group = f"workers-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    index = f"kafkaworkers-{uuid.uuid4().hex[:6]}"
    good = [line.rstrip(b"\n") for line in generator.lines(3000, max_chars=600)]  # blocks worth a worker's time
    values = [*good[:1500], b"not json {", *good[1500:2200], b"[1, 2]", *good[2200:]]
    delivered: dict[bytes, tuple[int, int]] = {}
    produce(kafka, topic, values, delivered=delivered)
    output = {"type": "elasticsearch", "hosts": [es_url], "index": index, "id_key": "", "install_template": False,
              "request_timeout": 10.0, **access_for(es_url).output_options()}
    write_source_config(layout, kafka, topic, group, output, parse_workers=2, file_too=True)
    with dropping_indices(es_url) as use:
        es = use(index)
        with new_daemon(layout, daemon_factory) as daemon:
            wait_for(partial(arrived_at_least, layout, len(good)), timeout=60, what="every good message in the file")
            wait_for(lambda: es.count(f"{index}*") >= len(good), what="every good message in Elasticsearch")
            wait_for(lambda: len(layout.dead_letters()) == 2, what="the two bad messages dead-lettered")
            workers = orjson.loads(layout.http("/status")[1])["parse_workers"]
            assert daemon.stop() == 0
        ids = es.ids(index)
    assert workers["blocks_in_workers"] >= 2, workers
    Ledger.compare([generator.request_id(1, n) for n in range(len(good))], layout.records()).assert_exact()
    expected_ids = {hashed_id(f"{topic}:0", delivered[v][1], orjson.loads(v)["timestamp"]) for v in good}
    assert len(ids) == len(good) and set(ids) == expected_ids, "ids from (topic, partition, offset), as on the loop"
    dead = {e["offset"]: e for e in layout.dead_letters()}
    assert sorted(dead) == [1500, 2201], "a bad message's dead letter names its own offset"
    assert dead[1500]["id"] == f"bus:{topic}:0:1500" and "invalid JSON" in dead[1500]["reason"]
    assert dead[2201]["reason"] == "not a JSON object"


def test_two_processes_in_one_group_one_killed_then_restarted_index_every_record_once(
    tmp_path, daemon_factory, kafka, es_url
):
    topic, group = f"fleet-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=4)
    index = f"kafkagroup-{uuid.uuid4().hex[:6]}"
    total = 9000  # es.ids reads up to 10,000
    values = [line.rstrip(b"\n") for line in generator.lines(total, max_chars=400)]
    delivered: dict[bytes, tuple[int, int]] = {}
    produce(kafka, topic, values[:1000], partitions=4, delivered=delivered)
    # About 500 messages a second: the kill, the takeover and the restart all happen mid-stream.
    live = threading.Thread(target=produce, args=(kafka, topic, values[1000:], 4, 50, delivered, 0.1))
    live.start()
    # id_key = "": ids from (topic, partition, offset), not from the records' request_id.
    output = {"type": "elasticsearch", "hosts": [es_url], "index": index, "id_key": "", "install_template": False,
              "request_timeout": 10.0, "bulk_max_docs": 200, **access_for(es_url).output_options()}
    layouts = [Layout(tmp_path / "a"), Layout(tmp_path / "b")]
    for each in layouts:
        write_source_config(each, kafka, topic, group, output, session_timeout=6.0, max_batch_messages=200)
    with dropping_indices(es_url) as use:
        es = use(index)
        first, second = (new_daemon(each, daemon_factory).start() for each in layouts)
        wait_for(lambda: assigned(layouts[0]) and assigned(layouts[1]), what="both processes holding partitions")
        wait_for(lambda: es.count(index) >= 2000, what="2000 documents before the kill")
        first.kill()
        wait_for(lambda: assigned(layouts[1]) == 4, timeout=60, what="the survivor taking every partition over")
        first = new_daemon(layouts[0], daemon_factory).start()
        wait_for(lambda: assigned(layouts[0]) and assigned(layouts[1]), what="the restarted process back in the group")
        assert live.is_alive(), "the records kept coming through the kill, the takeover and the restart"
        live.join(60)
        wait_for(lambda: es.count(index) >= total, timeout=120, what="every record")
        wait_for(lambda: sum(group_offsets(kafka, topic, group, 4)) == total, what="the group's offsets")
        assert first.stop() == 0 and second.stop() == 0
        found = all_documents(es_url, index)
        ids = es.ids(index)
    Ledger.compare([generator.request_id(1, n) for n in range(total)], found).assert_exact()
    expected_ids = set()
    for value in values:
        part, offset = delivered[value]
        expected_ids.add(hashed_id(f"{topic}:{part}", offset, orjson.loads(value)["timestamp"]))
    assert len(ids) == total and set(ids) == expected_ids, "each id is the hash of (topic, partition, offset)"


def test_two_static_members_one_killed_and_restarted_at_once_write_each_record_once_to_their_files(
    tmp_path, daemon_factory, kafka
):
    """File outputs (no ids to absorb a redelivery): static membership gives a member killed and restarted within
    session_timeout its own partitions back, without a rebalance, from its saved positions."""
    topic, group = f"static-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=4)
    total = 12_000
    values = [line.rstrip(b"\n") for line in generator.lines(total, max_chars=400)]
    produce(kafka, topic, values[:2000], partitions=4)
    layouts = [Layout(tmp_path / "a"), Layout(tmp_path / "b")]
    # Small steps make a kill land between a batch's commit to the buffers and its offset's commit to the group.
    # A restart takes 1-2 s, well within the 15 s session.
    for each in layouts:
        write_source_config(each, kafka, topic, group, session_timeout=15.0, max_batch_messages=100)
    daemons = [new_daemon(each, daemon_factory).start() for each in layouts]
    wait_for(lambda: [assigned(each) for each in layouts] == [2, 2], what="two partitions held by each process")
    held = [held_partitions(each) for each in layouts]
    # About 500 messages a second: every kill and restart happens mid-stream.
    live = threading.Thread(target=produce, args=(kafka, topic, values[2000:], 4, 50, None, 0.1))
    live.start()
    rebalances, regained = [], []
    for n, kill_at in enumerate((4000, 6500, 9000)):
        victim, other = n % 2, 1 - n % 2
        wait_for(partial(reached, layouts, kill_at), what=f"{kill_at} records before kill {n + 1}")
        revoked_before = daemons[other].log().count("source bus: revoked")
        daemons[victim].kill()
        daemons[victim] = new_daemon(layouts[victim], daemon_factory).start()
        wait_for(lambda: [assigned(each) for each in layouts] == [2, 2], what="the restarted member back")
        regained.append(held_partitions(layouts[victim]) == held[victim])
        rebalances.append(daemons[other].log().count("source bus: revoked") - revoked_before)
    mid_stream = live.is_alive()
    live.join(60)
    wait_for(partial(reached, layouts, total), timeout=90, what="every record")
    wait_for(lambda: sum(group_offsets(kafka, topic, group, 4)) == total, what="the group's offsets")
    status = [orjson.loads(each.http("/status")[1])["sources"]["bus"] for each in layouts]
    assert all(daemon.stop() == 0 for daemon in daemons)
    Ledger.compare([generator.request_id(1, n) for n in range(total)],
                   [*layouts[0].records(), *layouts[1].records()]).assert_exact()
    assert mid_stream, "the records kept coming through every kill and restart"
    assert regained == [True, True, True], "each restarted member got its own partitions back"
    assert rebalances == [0, 0, 0], "the other member never gave up its partitions"
    assert [s["instance_id"] for s in status] == [default_instance_id("bus", each.state, os.uname().nodename)
                                                  for each in layouts]


def test_a_member_fenced_by_another_with_its_instance_id_stops_and_says_so_in_status(
    tmp_path, daemon_factory, kafka
):
    topic, group = f"fenced-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    shared = f"indexer-{uuid.uuid4().hex[:6]}"
    kafka.create_topic(topic, partitions=2)
    values = [line.rstrip(b"\n") for line in generator.lines(400, max_chars=300)]
    produce(kafka, topic, values[:200], partitions=2)
    first, second = Layout(tmp_path / "a"), Layout(tmp_path / "b")
    for each in (first, second):
        write_source_config(each, kafka, topic, group, instance_id=shared, session_timeout=10.0)
    older = new_daemon(first, daemon_factory).start()
    wait_for(lambda: sum(group_offsets(kafka, topic, group, 2)) == 200, what="the first 200 committed")
    newer = new_daemon(second, daemon_factory).start()  # joins with the same id: the older member is fenced
    wait_for(lambda: "fenced" in (layouts_status(first)["problem"] or ""), timeout=30, what="the fence in status")
    wait_for(lambda: assigned(second) == 2, what="the newer process holding both partitions")
    produce(kafka, topic, values[200:], partitions=2)
    wait_for(lambda: sum(group_offsets(kafka, topic, group, 2)) == 400, what="the last 200 committed")
    problem = layouts_status(first)["problem"]
    code, health = first.http("/health")
    assert older.proc is not None and older.proc.poll() is None, "fenced, not exited (systemd would restart it)"
    assert older.stop() == 0 and newer.stop() == 0
    assert f"instance id {shared}" in problem and f"group {group}" in problem, problem
    assert code == 503 and shared in health.decode(), health
    assert "fenced out of group" in older.log() and older.log().count("fenced out of group") <= 2, "said once"
    Ledger.compare([generator.request_id(1, n) for n in range(200)], first.records()).assert_exact()
    Ledger.compare([generator.request_id(1, n) for n in range(200, 400)], second.records()).assert_exact()


def test_a_static_member_stopped_cleanly_keeps_its_partitions_until_its_session_times_out(
    tmp_path, daemon_factory, kafka
):
    """librdkafka sends no LeaveGroup for a static member (KIP-345): the other takes its partitions only after
    session_timeout, from the offsets committed at the stop, so nothing is read twice."""
    topic, group = f"clean-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, partitions=4)
    values = [line.rstrip(b"\n") for line in generator.lines(800, max_chars=300)]
    produce(kafka, topic, values[:400], partitions=4)
    layouts = [Layout(tmp_path / "a"), Layout(tmp_path / "b")]
    for each in layouts:
        write_source_config(each, kafka, topic, group, session_timeout=10.0)
    first, second = (new_daemon(each, daemon_factory).start() for each in layouts)
    wait_for(lambda: [assigned(each) for each in layouts] == [2, 2], what="two partitions held by each process")
    wait_for(lambda: sum(group_offsets(kafka, topic, group, 4)) == 400, what="the first 400 committed")
    stopped = time.monotonic()
    assert first.stop() == 0
    wait_for(lambda: assigned(layouts[1]) == 4, timeout=30, what="the other process taking every partition")
    waited = time.monotonic() - stopped
    produce(kafka, topic, values[400:], partitions=4)
    wait_for(lambda: sum(group_offsets(kafka, topic, group, 4)) == 800, what="the last 400 committed")
    assert second.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(800)],
                   [*layouts[0].records(), *layouts[1].records()]).assert_exact()
    # A dynamic member hands over within a heartbeat or so (2.9 s measured); the static one after its session
    # expires and the others rebalance (12.0 s measured).
    assert waited > 10.0 / 2, f"handed over after {waited:.1f} s: a static member left the group at its stop"


def layouts_status(layout: Layout) -> dict[str, Any]:
    """The kafka source's entry in the status of the process on ``layout``."""
    return dict(orjson.loads(layout.http("/status")[1])["sources"]["bus"])


def reached(layouts: list[Layout], count: int) -> bool:
    """Whether the file outputs of the processes on ``layouts`` hold ``count`` records together."""
    return sum(len(each.records()) for each in layouts) >= count


def held_partitions(layout: Layout) -> set[int]:
    """The partitions the process on ``layout`` holds, as its status says (none while it starts)."""
    try:
        status = orjson.loads(layout.http("/status")[1])
    except OSError:
        return set()
    return {row["partition"] for row in status["sources"]["bus"]["partitions"]}


def assigned(layout: Layout) -> int:
    """How many partitions the process on ``layout`` holds, as its status says (0 while it starts)."""
    try:
        status = orjson.loads(layout.http("/status")[1])
    except OSError:
        return 0  # not answering yet (or a stale address of a killed predecessor)
    return len(status["sources"]["bus"]["partitions"])


def test_tls_and_scram_with_the_password_from_a_file_and_problems_named_in_status(layout, daemon_factory, kafka):
    topic, group = f"secure-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    produce(kafka, topic, [line.rstrip(b"\n") for line in generator.lines(50, max_chars=300)])
    secret = layout.root / "kafka.password"
    secret.write_text(kafka.password + "\n")
    secure = {"brokers": [kafka.secure_bootstrap], "tls": True, "ca_file": str(kafka.ca_file),
              "sasl_mechanism": "SCRAM-SHA-512", "username": kafka.scram_user}
    write_source_config(layout, kafka, topic, group, **secure, password_file=str(secret))
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(partial(arrived_at_least, layout, 50), what="the records over TLS with SCRAM-SHA-512")
        assert daemon.stop() == 0
    Ledger.compare([generator.request_id(1, n) for n in range(50)], layout.records()).assert_exact()

    write_source_config(layout, kafka, topic, f"{group}-refused", **secure)
    with new_daemon(layout, daemon_factory, {"LOGFERRY_SOURCES__BUS__PASSWORD": "not-the-password"}) as daemon:
        wait_for(lambda: f"refused the credentials of {kafka.scram_user}" in layout.http("/status")[1].decode(),
                 what="the refused credentials in status")
        assert layout.http("/health")[0] != 200
        assert daemon.stop() == 0
    assert "not-the-password" not in daemon.log()


def test_an_unreachable_broker_and_a_missing_topic_are_named_in_status(layout, daemon_factory, kafka):
    closed = free_port()
    write_source_config(layout, kafka, "anything", "indexers", brokers=[f"127.0.0.1:{closed}"])
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: f"cannot reach the brokers 127.0.0.1:{closed}" in layout.http("/status")[1].decode(),
                 what="the unreachable broker in status")
        code, body = layout.http("/health")
        assert code == 503 and f"source bus: cannot reach the brokers 127.0.0.1:{closed}" in body.decode(), body
        assert daemon.stop() == 0
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    write_source_config(layout, kafka, missing, "indexers")
    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: missing in layout.http("/status")[1].decode(), what="the missing topic in status")
        assert daemon.stop() == 0


def held_by_a_full_buffer(layout: Layout, kafka: KafkaBroker, name: str, count: int, partitions: int = 1
                          ) -> tuple[str, str, str, Path]:
    """``count`` messages of 10 KB in a new topic (round-robin over ``partitions``), and a kafka → file pipeline
    whose output cannot write (its directory is a file, until the test makes it one) and whose buffer one batch
    of 10 messages fills: the topic, another topic, the group and the output's directory."""
    topic, other, group = (f"{n}-{uuid.uuid4().hex[:8]}" for n in (name, "elsewhere", "indexers"))
    kafka.create_topic(topic, partitions=partitions)
    kafka.create_topic(other)
    produce(kafka, topic, [orjson.dumps({"request_id": f"m{n}", "pad": "x" * 10_000}) for n in range(count)],
            partitions=partitions)
    delivered = layout.root / "delivered"
    delivered.write_text("a file where the output wants its directory: nothing is delivered")
    buffer = {"flush_interval": 0.05, "retry_wait": 0.1, "retry_max_interval": 0.5, "retry_limit": 10_000,
              "total_limit_bytes": 64 * 1024}
    layout.config.write_text(render_toml({
        "state_dir": layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "sources": {"bus": {"type": "kafka", "brokers": [kafka.bootstrap], "topics": [topic], "group_id": group,
                            "tag": "ai.interactions", "instance_id": "", "max_batch_messages": 10}},
        "outputs": {"out": {"type": "file", "path": str(delivered / "%Y%m%d-%H.jsonl"), "buffer": buffer}},
    }))
    return topic, other, group, delivered


def delivered_ids(delivered: Path) -> list[str]:
    """The request ids in the file output's directory, in message order."""
    found = [orjson.loads(line)["request_id"] for path in sorted(delivered.glob("*.jsonl"))
             for line in path.read_bytes().splitlines()]
    return sorted(found, key=lambda r: int(r[1:]))


def test_a_partition_given_back_after_a_revoke_ran_out_of_time_is_not_read_twice(layout, daemon_factory, kafka):
    """A rebalance while the buffer is full (the file output cannot write): the revoke waits for the batches
    in flight, in vain, and lets go; the partition comes straight back (the other member takes another
    topic). Those batches are dropped once the output writes again (their assignment ended) and read again
    in the new one: every message in the file output once, none stored twice."""
    topic, other, group, delivered = held_by_a_full_buffer(layout, kafka, "give-back", 40)

    def partition() -> dict[str, Any]:
        rows = orjson.loads(layout.http("/status")[1])["sources"]["bus"]["partitions"]
        return rows[0] if rows else {}

    stop_other = threading.Event()

    def other_member() -> None:  # joins the group for another topic: an eager rebalance revokes everything
        consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "session.timeout.ms": 6000})
        consumer.subscribe([other])
        try:
            while not stop_other.is_set():
                consumer.poll(0.1)
        finally:
            consumer.close()

    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: partition().get("committed") == 10 and partition().get("batches_in_flight") == 3,
                 what="the first batch in the buffer, the other three waiting for room")
        joiner = threading.Thread(target=other_member)
        joiner.start()
        try:
            wait_for(lambda: daemon.log().count("source bus: assigned") >= 2 and partition(), timeout=60,
                     what="the partition revoked (after the revoke's wait) and given back")
            delivered.unlink()
            delivered.mkdir()
            wait_for(lambda: group_offsets(kafka, topic, group, 1) == [40], timeout=60,
                     what="every offset committed to the group")
            wait_for(lambda: partition().get("batches_in_flight") == 0, what="nothing left in flight")
            wait_for(lambda: len(delivered_ids(delivered)) >= 40, what="every message in the file output")
            assert daemon.stop() == 0
        finally:
            stop_other.set()
            joiner.join()
    assert delivered_ids(delivered) == [f"m{n}" for n in range(40)], "each message once"
    assert "3 batches of the revoked partitions were not yet stored: they are dropped" in daemon.log()


def test_a_partition_taken_by_another_member_after_a_revoke_ran_out_of_time_is_stored_once_by_the_two(
        tmp_path, daemon_factory, kafka):
    """The first process holds both partitions with batches of each waiting for room (its file output cannot
    write) when a second process joins the group: the first one's revoke waits for those batches in vain and
    lets one partition go to the second, which reads it from the group's offset. Once the first one's output
    writes again, it drops its batches of that partition instead of storing them: together the two file
    outputs hold every message once."""
    first_layout, second_layout = Layout(tmp_path / "a"), Layout(tmp_path / "b")
    topic, _, group, delivered = held_by_a_full_buffer(first_layout, kafka, "moved", 60, partitions=2)
    write_source_config(second_layout, kafka, topic, group, instance_id="", max_batch_messages=10)

    def in_flight() -> dict[int, int]:
        rows = orjson.loads(first_layout.http("/status")[1])["sources"]["bus"]["partitions"]
        return {row["partition"]: row["batches_in_flight"] for row in rows}

    with new_daemon(first_layout, daemon_factory) as first:
        wait_for(lambda: len(in_flight()) == 2 and all(in_flight().values()),
                 what="batches of both partitions waiting for room in the first process")
        with new_daemon(second_layout, daemon_factory) as second:
            wait_for(lambda: assigned(second_layout) == 1 and len(in_flight()) == 1, timeout=60,
                     what="one partition moved to the second process after the first one's revoke ran out")
            moved = held_partitions(second_layout)
            (index,) = moved
            wait_for(lambda: group_offsets(kafka, topic, group, 2)[index] == 30, timeout=60,
                     what="the moved partition read to its end by the second process")
            delivered.unlink()
            delivered.mkdir()
            wait_for(lambda: group_offsets(kafka, topic, group, 2) == [30, 30], timeout=60,
                     what="every offset committed to the group")
            wait_for(lambda: sum(in_flight().values()) == 0, what="nothing left in flight")
            wait_for(lambda: len(delivered_ids(delivered)) + len(second_layout.records()) >= 60,
                     what="every message in one of the file outputs")
            assert first.stop() == 0 and second.stop() == 0
    second_ids = [record["request_id"] for record in second_layout.records()]
    assert sorted([*delivered_ids(delivered), *second_ids], key=lambda r: int(r[1:])) == [f"m{n}" for n in range(60)]
    assert {int(r[1:]) % 2 for r in second_ids} == moved, "the second process stored the moved partition only"
    assert "not yet stored: they are dropped and read again by the partitions' next owner" in first.log()


def test_a_member_held_by_a_full_buffer_still_takes_part_in_a_rebalance_and_stores_each_message_once(
        layout, daemon_factory, kafka):
    """The file output cannot write, so the buffer fills and the source's hand-off blocks for good. The
    source keeps polling its group (partitions paused): another member joining gets its assignment in
    seconds, not after librdkafka's max.poll.interval.ms (5 minutes), and once the output writes again
    every message is in the file output once."""
    topic, other, group, delivered = held_by_a_full_buffer(layout, kafka, "held", 300)

    def in_flight() -> int:
        rows = orjson.loads(layout.http("/status")[1])["sources"]["bus"]["partitions"]
        return int(rows[0]["batches_in_flight"]) if rows else -1

    with new_daemon(layout, daemon_factory) as daemon:
        wait_for(lambda: in_flight() >= 15, what="the pipeline's queues full of batches waiting for room")
        consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "session.timeout.ms": 6000})
        try:
            consumer.subscribe([other])
            joined = time.monotonic()
            while not consumer.assignment():
                consumer.poll(0.2)
                assert time.monotonic() - joined < 60, "the rebalance waited for the held member"
            assert [(tp.topic, tp.partition) for tp in consumer.assignment()] == [(other, 0)]
            wait_for(lambda: daemon.log().count("source bus: assigned") >= 2 and in_flight() >= 0,
                     what="the held member given its partition back")
            delivered.unlink()
            delivered.mkdir()
            wait_for(lambda: group_offsets(kafka, topic, group, 1) == [300], timeout=120,
                     what="every offset committed to the group")
            wait_for(lambda: in_flight() == 0, what="nothing left in flight")
            # Chunks go out once the group has confirmed their batches (LineBatch.confirm): wait for that, not just
            # for the offsets to reach the group.
            wait_for(lambda: len(delivered_ids(delivered)) >= 300, what="every message in the file output")
            assert daemon.stop() == 0
        finally:
            consumer.close()
    assert delivered_ids(delivered) == [f"m{n}" for n in range(300)], "each message once"


def commit_as_if_the_last_commit_was_lost(kafka: KafkaBroker, topic: str, group: str, offset: int) -> bool:
    """Move the group's offset of partition 0 back to ``offset``, keeping the metadata (the owners' chain) the
    member's commits carried: the state a kill -9 leaves when the member stored records up to the group's
    present offset but told the group only of ``offset``. False while the killed member's session lasts (the
    group refuses a commit from outside it)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        (now,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        consumer.commit(offsets=[TopicPartition(topic, 0, offset, metadata=now.metadata)], asynchronous=False)
        return True
    except KafkaException as exc:
        if exc.args[0].code() not in (*PASSING_COORDINATOR_ERRORS, KafkaError.UNKNOWN_MEMBER_ID,
                                      KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS):
            raise
        return False
    finally:
        consumer.close()


def test_records_a_member_stored_then_read_again_by_another_while_it_was_down_are_delivered_once(
        tmp_path, daemon_factory, kafka):
    """The first process stores 40 messages (its file output cannot write yet) and is killed after telling the group
    of the first 20 only; it stays down past its session, so the second process takes the partition and reads
    20..39 again from the group's offset. When the first one comes back (its output repaired) it delivers 0..19
    from its buffer and leaves 20..39 to the second: together the two file outputs hold each message once."""
    first_layout, second_layout = Layout(tmp_path / "a"), Layout(tmp_path / "b")
    topic, group = f"takeover-{uuid.uuid4().hex[:8]}", f"indexers-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic)
    values = [orjson.dumps({"request_id": f"m{n}", "pad": "x" * 100}) for n in range(40)]
    delivered = first_layout.root / "delivered"
    delivered.write_text("a file where the output wants its directory: nothing is delivered")
    buffer = {"flush_interval": 0.05, "retry_wait": 0.1, "retry_max_interval": 0.5, "retry_limit": 10_000}
    first_layout.config.write_text(render_toml({
        "state_dir": first_layout.state, "shutdown_timeout": 10.0, "health": {"listen": "127.0.0.1:0"},
        "sources": {"bus": {"type": "kafka", "brokers": [kafka.bootstrap], "topics": [topic], "group_id": group,
                            "tag": "ai.interactions", "instance_id": "", "session_timeout": 6.0}},
        "outputs": {"out": {"type": "file", "path": str(delivered / "%Y%m%d-%H.jsonl"), "buffer": buffer}},
    }))
    first = new_daemon(first_layout, daemon_factory).start()
    produce(kafka, topic, values[:20])
    wait_for(lambda: group_offsets(kafka, topic, group, 1) == [20], what="the first 20 stored and told to the group")
    produce(kafka, topic, values[20:])
    wait_for(lambda: group_offsets(kafka, topic, group, 1) == [40], what="the other 20 stored and told to the group")
    first.kill()
    wait_for(partial(commit_as_if_the_last_commit_was_lost, kafka, topic, group, 20), timeout=30,
             what="the first process's session over, its last commit undone")
    write_source_config(second_layout, kafka, topic, group, instance_id="")
    with new_daemon(second_layout, daemon_factory) as second:
        wait_for(lambda: group_offsets(kafka, topic, group, 1) == [40] and len(second_layout.records()) == 20,
                 what="20..39 read again and delivered by the second process")
        assert second.stop() == 0
    delivered.unlink()
    delivered.mkdir()
    with new_daemon(first_layout, daemon_factory) as first:
        wait_for(lambda: not first_layout.buffered_chunks("out") and delivered_ids(delivered), timeout=30,
                 what="the first process's buffer delivered")
        assert first.stop() == 0
    second_ids = [record["request_id"] for record in second_layout.records()]
    assert second_ids == [f"m{n}" for n in range(20, 40)]
    assert delivered_ids(delivered) == [f"m{n}" for n in range(20)], "what the second process read again, left out"
    assert "offsets 20 to 39, stored here before the restart, are delivered by the partition's next owner" in (
        first.log())
