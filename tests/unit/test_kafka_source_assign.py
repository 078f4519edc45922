"""Where the kafka source starts a partition it is given (``KafkaSource._on_assign``), with a stand-in consumer:
the group's offset, our saved position, and the batches of it a commit is storing.

How the batches of an ended assignment are dropped (``claim``) is tested against the real broker in
tests/integration/test_kafka_source.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.clock import FakeClock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.base import SourceContext
from pipeline.sources.kafka import source as source_module
from pipeline.sources.kafka.config import KafkaSourceConfig
from pipeline.sources.kafka.source import KafkaSource, partition_key, partition_path
from pipeline.sources.tail.checkpoint import FilePosition, PositionStore

PARTITION = ("t", 0)


class StandInConsumer:
    """``committed`` gives the group's offset (or fails, as when the coordinator cannot be reached); ``assign``
    keeps where each partition starts."""

    def __init__(self, group_offset: int | None) -> None:
        self.group_offset = group_offset
        self.started: dict[tuple[str, int], int] = {}
        self.commits: list[list[tuple[str, int, int]]] = []  # the offsets sent to the group, per commit

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.group_offset is None:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return [TopicPartition(tp.topic, tp.partition, self.group_offset) for tp in partitions]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.started = {(tp.topic, tp.partition): tp.offset for tp in partitions}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


def source_with_saved_position(tmp_path: Path, saved: int) -> KafkaSource:
    positions = PositionStore(tmp_path / "positions.json")
    key = partition_key(*PARTITION)
    positions.save_now({("bus", key): FilePosition("bus", key, partition_path(*PARTITION), saved, "", 0)})
    context = SourceContext(positions, DeadLetterStore(tmp_path / "dead"), FakeClock(0.0), tmp_path)
    config = KafkaSourceConfig(type="kafka", brokers=["127.0.0.1:9"], topics=["t"], group_id="g", tag="ai")
    return KafkaSource("bus", config, context)


def assign(source: KafkaSource, consumer: StandInConsumer) -> None:
    source._on_assign(cast(Consumer, consumer), [TopicPartition(*PARTITION)])  # librdkafka's callback


def revoke_with_a_commit_stuck(source: KafkaSource, consumer: StandInConsumer, end: int,
                               monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """A batch up to ``end`` claimed by a commit that outlasts the revoke's waits (a failing disk): the revoke
    lets the partition go; the batch's ``on_commit``, to call once that commit is through, is returned."""
    monkeypatch.setattr(source_module, "REVOKE_WAIT_SECONDS", 0.01)
    monkeypatch.setattr(source_module, "COMMITTING_WAIT_SECONDS", 0.01)
    state = source.partitions[PARTITION]
    source._in_flight[PARTITION] += 1
    assert source._claim_callback(PARTITION, state, end)()
    source._on_revoke(cast(Consumer, consumer), [TopicPartition(*PARTITION)])
    assert PARTITION not in source.partitions
    return cast(Callable[[], None], source._committed_callback(PARTITION, end))


def test_our_saved_position_ahead_of_the_group_is_where_we_start_and_what_we_tell_the_group(tmp_path: Path) -> None:
    source, consumer = source_with_saved_position(tmp_path, 7), StandInConsumer(group_offset=5)
    assign(source, consumer)
    assert consumer.started == {PARTITION: 7}
    assert source._durable == {PARTITION: 7}
    assert source.partitions[PARTITION].committed == 7


def test_when_the_group_offset_cannot_be_read_we_start_from_ours_but_tell_the_group_nothing(tmp_path: Path) -> None:
    # Ours may be behind what another member committed meanwhile: committing it would move the group back.
    source, consumer = source_with_saved_position(tmp_path, 7), StandInConsumer(group_offset=None)
    assign(source, consumer)
    assert consumer.started == {PARTITION: 7}
    assert source._durable == {}


def test_a_partition_given_back_while_a_commit_of_it_is_under_way_resumes_after_what_that_commit_stores(
        tmp_path: Path) -> None:
    source, consumer = source_with_saved_position(tmp_path, 7), StandInConsumer(group_offset=5)
    source._in_flight[PARTITION] = 3  # emitted up to 15, not yet in the buffers: up to 12 in a commit under way
    source._committing[PARTITION] = 2
    source._committing_end[PARTITION] = 12
    assign(source, consumer)
    assert consumer.started == {PARTITION: 12}, "the batch not claimed by a commit is dropped and read again"
    assert source._durable == {PARTITION: 7}, "only what the buffers hold goes to the group"
    assert source.partitions[PARTITION].committed == 7
    source._in_flight[PARTITION] = source._committing[PARTITION] = 0  # stored: the saved position covers them
    key = partition_key(*PARTITION)
    source.positions.save_now({("bus", key): FilePosition("bus", key, partition_path(*PARTITION), 12, "", 0)})
    assign(source, consumer)
    assert consumer.started == {PARTITION: 12}


def test_a_partition_given_back_with_batches_in_flight_but_none_being_committed_starts_at_the_saved_position(
        tmp_path: Path) -> None:
    source, consumer = source_with_saved_position(tmp_path, 7), StandInConsumer(group_offset=5)
    source._in_flight[PARTITION] = 2  # still waiting for room: the committer drops them (their assignment ended)
    source._committing_end[PARTITION] = 4  # an old commit's end, before the saved position
    assign(source, consumer)
    assert consumer.started == {PARTITION: 7}


def test_a_stuck_commit_ending_after_the_group_moved_on_never_moves_the_group_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, consumer = source_with_saved_position(tmp_path, 0), StandInConsumer(group_offset=0)
    assign(source, consumer)
    stored = revoke_with_a_commit_stuck(source, consumer, 10, monkeypatch)
    stored()  # the commit goes through once the partition is another member's
    source._commit_durable(cast(Consumer, consumer), asynchronous=True)
    assert consumer.commits == [], "not ours any more: nothing goes to the group"
    key = partition_key(*PARTITION)
    source.positions.save_now({("bus", key): FilePosition("bus", key, partition_path(*PARTITION), 10, "", 0)})
    consumer.group_offset = 500  # the other member read on to 500, then the partition came back to us
    assign(source, consumer)
    source._commit_durable(cast(Consumer, consumer), asynchronous=True)
    assert consumer.started == {PARTITION: 500} and consumer.commits == []


def test_a_partition_given_back_after_a_stuck_commit_never_steps_over_a_marker_before_that_commit_is_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stuck batch ends at 5, where a transaction's commit marker is: started at 5, the consumer returns no
    # message and stands at 6. Telling the group 6 before 0..4 are stored would lose them if the commit never
    # went through (a restart starts at the further of the group's offset and ours).
    source, consumer = source_with_saved_position(tmp_path, 0), StandInConsumer(group_offset=0)
    assign(source, consumer)
    stored = revoke_with_a_commit_stuck(source, consumer, 5, monkeypatch)
    assign(source, consumer)
    assert consumer.started == {PARTITION: 5}
    source._note_positions({PARTITION: 6})
    source._commit_durable(cast(Consumer, consumer), asynchronous=True)
    assert consumer.commits == [] and source.lag()[0]["committed"] == 0
    stored()
    source._commit_durable(cast(Consumer, consumer), asynchronous=True)
    assert consumer.commits == [[("t", 0, 6)]], "stored: the group is told, past the marker"
