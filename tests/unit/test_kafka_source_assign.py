"""Where the kafka source starts a partition it is given (``KafkaSource._on_assign``), with a stand-in consumer:
the group's offset, our saved position, and the batches of it a commit is storing.

How the batches of an ended assignment are dropped (``claim``) is tested against the real broker in
tests/integration/test_kafka_source.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.buffer.chunk import Hold
from pipeline.buffer.drops import DropRule, RecordDrops
from pipeline.clock import FakeClock
from pipeline.deadletter import DeadLetterStore
from pipeline.sources.base import SourceContext
from pipeline.sources.kafka import source as source_module
from pipeline.sources.kafka.config import KafkaSourceConfig
from pipeline.sources.kafka.ownership import GroupOffset, decode_metadata, encode_metadata
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
    context = SourceContext(positions, DeadLetterStore(tmp_path / "dead"), FakeClock(0.0), tmp_path,
                            drops=RecordDrops(tmp_path))
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
    return cast(Callable[[], None], source._committed_callback(PARTITION, state, end))


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


def test_a_partition_given_back_while_a_commit_of_it_is_under_way_is_read_again_and_that_commit_moves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stuck batch (7..11) is settled with the group once stored (_decide_ended: left out, the new assignment
    reads it again); skipping past it instead lost it when the group gave it to the new assignment's read."""
    source, consumer = source_with_saved_position(tmp_path, 7), StandInConsumer(group_offset=5)
    assign(source, consumer)
    stored = revoke_with_a_commit_stuck(source, consumer, 12, monkeypatch)
    assign(source, consumer)
    assert consumer.started == {PARTITION: 7}
    stored()
    source._commit_durable(cast(Consumer, consumer), asynchronous=True)
    assert {c for commit in consumer.commits for c in commit} == {("t", 0, 7)}, "never the stuck batch's 12"
    assert source.partitions[PARTITION].committed == 7


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


def test_a_partition_given_back_after_a_stuck_commit_never_steps_over_a_marker_before_it_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stuck batch ends at 5, where a transaction's commit marker is. The partition given back starts at the
    # group's 0; the stuck batch, stored at last, tells the group nothing: only what the new assignment reads does.
    source, consumer = source_with_saved_position(tmp_path, 0), StandInConsumer(group_offset=0)
    assign(source, consumer)
    stored = revoke_with_a_commit_stuck(source, consumer, 5, monkeypatch)
    assign(source, consumer)
    assert consumer.started == {PARTITION: 0}
    stored()
    source._note_positions({PARTITION: 0})
    source._commit_durable(cast(Consumer, consumer), asynchronous=True)
    assert consumer.commits == [] and source.lag()[0]["committed"] == 0


class ChainConsumer(StandInConsumer):
    """A group whose offset carries metadata (the owners' chain our commits write); ``commit`` keeps it too."""

    def __init__(self, group_offset: int, metadata: str = "") -> None:
        super().__init__(group_offset)
        self.metadata = metadata
        self.sent: list[str] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        offset = -1 if self.group_offset is None else self.group_offset
        return [TopicPartition(tp.topic, tp.partition, offset, metadata=self.metadata) for tp in partitions]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        super().commit(offsets, asynchronous)
        self.sent += [tp.metadata or "" for tp in offsets]


def store(source: KafkaSource, end: int) -> FilePosition:
    """A batch of the assigned partition up to ``end`` stored by the committer: its position saved, on_commit."""
    state = source.partitions[PARTITION]
    key = partition_key(*PARTITION)
    position = FilePosition("bus", key, partition_path(*PARTITION), end, state.topic_id, 0, owner=state.token,
                            owner_start=state.owners[-1][1])
    source.positions.save_now({("bus", key): position})
    source._in_flight[PARTITION] += 1
    assert source._claim_callback(PARTITION, state, end)()
    source._committed_callback(PARTITION, state, end)()
    return position


def test_each_assignment_tells_the_group_the_owners_before_it_and_itself_from_the_groups_offset(tmp_path: Path) -> None:
    source = source_with_saved_position(tmp_path, 0)
    earlier = encode_metadata("", [("a1", 0), ("b2", 20)])
    consumer = ChainConsumer(group_offset=30, metadata=earlier)
    assign(source, consumer)
    token = source.partitions[PARTITION].token
    position = store(source, 45)
    source._commit_durable(cast(Consumer, consumer), asynchronous=True)
    assert consumer.commits == [[("t", 0, 45)]]
    assert decode_metadata(45, consumer.sent[0]).owners == [("a1", 0), ("b2", 20), (token, 30)]
    assert (position.owner, position.owner_start) == (token, 30)
    assign(source, consumer)  # given back: a new assignment, a new token
    assert source.partitions[PARTITION].token not in ("", token)


def source_that_stored(tmp_path: Path, chunks: frozenset[str], owner: str, start: int, end: int) -> KafkaSource:
    """A source whose saved position says the assignment ``owner`` (begun at ``start``) stored up to ``end``,
    with the buffers holding ``chunks`` at start."""
    positions = PositionStore(tmp_path / "positions.json")
    key = partition_key(*PARTITION)
    positions.save_now({("bus", key): FilePosition("bus", key, partition_path(*PARTITION), end, "id1", 0,
                                                   owner=owner, owner_start=start)})
    context = SourceContext(positions, DeadLetterStore(tmp_path / "dead"), FakeClock(0.0), tmp_path,
                            drops=RecordDrops(tmp_path), buffered_chunks=chunks)
    config = KafkaSourceConfig(type="kafka", brokers=["127.0.0.1:9"], topics=["t"], group_id="g", tag="ai")
    return KafkaSource("bus", config, context)


def prepared(source: KafkaSource, group: GroupOffset | None, monkeypatch: pytest.MonkeyPatch) -> list[DropRule]:
    """``prepare`` with the group's answer ``group`` (None: the brokers cannot be reached); the rules it made."""
    def group_offsets(saved: list[FilePosition]) -> dict[tuple[str, int], GroupOffset]:
        if group is None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return {PARTITION: group}
    monkeypatch.setattr(source, "_ask_group", group_offsets)
    asyncio.run(source.prepare())
    assert source.context.drops is not None
    return source.context.drops.rules


def test_what_a_member_that_took_over_read_again_is_left_out_and_the_partition_starts_at_the_group_offset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # We stored 0..39; the group heard of 20; "b2" took the partition at 20 and read on to 50.
    source = source_that_stored(tmp_path, frozenset({"c1", "c2"}), "a1", 0, 40)
    rules = prepared(source, GroupOffset(50, "id1", [("a1", 0), ("b2", 20)]), monkeypatch)
    assert rules == [DropRule("bus", "t:0", 20, source.positions.commit_seq, ("c1", "c2"))]
    consumer = ChainConsumer(group_offset=50, metadata=encode_metadata("id1", [("a1", 0), ("b2", 20)]))
    assign(source, consumer)
    assert consumer.started == {PARTITION: 50}


def test_when_nobody_came_after_us_the_records_past_the_groups_offset_are_read_again_not_delivered_from_the_buffer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # We stored 0..39, the group heard of 20, nobody else committed: whoever reads next (us) starts at 20.
    source = source_that_stored(tmp_path, frozenset({"c1"}), "a1", 0, 40)
    assert [r.offset for r in prepared(source, GroupOffset(20, "id1", [("a1", 0)]), monkeypatch)] == [20]
    consumer = ChainConsumer(group_offset=20, metadata=encode_metadata("id1", [("a1", 0)]))
    assign(source, consumer)
    assert consumer.started == {PARTITION: 20}, "not at our saved 40: 20..39 are left out of the buffers"
    assert source._durable == {}, "and the group is not told 40"


@pytest.mark.parametrize("group", [
    GroupOffset(40, "id1", [("a1", 0)]),  # the group heard of everything we stored
    GroupOffset(40, "id1", None),  # the group's offset carries no chain (another tool, an older logferry)
    GroupOffset(40, "id1", [("", 30), ("b2", 35)]),  # our token is before the part of the chain that is known
    GroupOffset(-1, "", None),  # the group holds no offset (they expire): nothing is known
    GroupOffset(50, "id2", [("a1", 0), ("b2", 20)]),  # the offset of a topic of that name created anew
    None,  # the brokers cannot be reached
])
def test_a_group_offset_that_does_not_say_another_member_read_our_records_leaves_them_all_to_us(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: GroupOffset | None) -> None:
    source = source_that_stored(tmp_path, frozenset({"c1"}), "a1", 0, 40)
    assert prepared(source, group, monkeypatch) == []
    assert source.positions.get("bus", "t:0").offset == 40  # type: ignore[union-attr]


class Held:
    """A stand-in for the committer's Hold: records its release."""

    def __init__(self, seq: int, chunk: str) -> None:
        self.seq, self.chunk_ids, self.released = seq, (chunk,), False

    def release(self) -> None:
        self.released = True


def stored_unconfirmed(source: KafkaSource, end: int, seq: int, chunk: str) -> Held:
    """A batch of the assigned partition up to ``end``, stored by commit ``seq`` in ``chunk``, its chunk held."""
    state = source.partitions[PARTITION]
    hold = Held(seq, chunk)
    source._confirm_callback(PARTITION, state, end)(cast(Hold, hold))
    return hold


def run_released(source: KafkaSource, loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))  # the releases the consumer thread posted to the event loop


def test_held_chunks_are_released_once_the_group_takes_their_offsets_and_only_those(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    source, consumer = source_with_saved_position(tmp_path, 0), ChainConsumer(group_offset=0)
    source._loop = loop
    assign(source, consumer)
    holds = [stored_unconfirmed(source, end, seq, f"c{seq}") for seq, end in ((1, 10), (2, 20), (3, 30))]
    source._on_group_commit(None, [TopicPartition("t", 0, 20)])
    run_released(source, loop)
    assert [h.released for h in holds] == [True, True, False]
    source._on_group_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [TopicPartition("t", 0, 30)])
    run_released(source, loop)
    assert not holds[2].released, "a refused commit confirms nothing"
    loop.close()


@pytest.mark.parametrize("group", [
    "ours-last",  # the group took 30 after all (our commit's answer was lost): all ours
    "taken-at-20",  # another member started at 20: ours up to 20, left out past it
    "unknown",  # the group's offset says nothing of ours: delivered, maybe twice
])
def test_batches_of_a_partition_lost_before_the_group_took_them_are_delivered_up_to_the_next_owners_start(
        tmp_path: Path, group: str) -> None:
    loop = asyncio.new_event_loop()
    source = source_with_saved_position(tmp_path, 0)
    source._loop = loop
    consumer = ChainConsumer(group_offset=0)
    assign(source, consumer)
    token = source.partitions[PARTITION].token
    holds = [stored_unconfirmed(source, end, seq, f"c{seq}") for seq, end in ((1, 10), (2, 20), (3, 30))]
    source._on_lost(cast(Consumer, consumer), [TopicPartition(*PARTITION)])
    assert not any(h.released for h in holds) and len(source._ended) == 1
    consumer.group_offset, consumer.metadata = {
        "ours-last": (30, encode_metadata("", [(token, 0)])),
        "taken-at-20": (45, encode_metadata("", [(token, 0), ("other", 20)])),
        "unknown": (45, ""),
    }[group]
    source._decide_ended(cast(Consumer, consumer))
    run_released(source, loop)
    assert all(h.released for h in holds) and source._ended == [], "released once the group said who delivers"
    assert source.context.drops is not None
    rules = source.context.drops.rules
    if group == "taken-at-20":
        assert rules == [DropRule("bus", "t:0", 20, 3, ("c3",))], "what the other member read again: left out"
    else:
        assert rules == []
    loop.close()


def test_a_batch_stored_after_its_partition_was_revoked_is_settled_by_the_group_not_held_for_ever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The revoke ran out of time while a commit of the batch was stuck (a failing disk); the commit then goes
    through: the group is asked who delivers it, and since another member started at 0, it is left out."""
    loop = asyncio.new_event_loop()
    try:
        source, consumer = source_with_saved_position(tmp_path, 0), ChainConsumer(group_offset=0)
        source._loop = loop
        assign(source, consumer)
        token, state = source.partitions[PARTITION].token, source.partitions[PARTITION]
        stored = revoke_with_a_commit_stuck(source, consumer, 10, monkeypatch)
        hold = Held(4, "c4")
        source._confirm_callback(PARTITION, state, 10)(cast(Hold, hold))  # the committer, once the commit is through
        stored()
        consumer.group_offset, consumer.metadata = 0, encode_metadata("", [("", 0), (token, 0), ("other", 0)])
        source._decide_ended(cast(Consumer, consumer))
        run_released(source, loop)
        assert hold.released
        assert source.context.drops is not None
        assert source.context.drops.rules == [DropRule("bus", "t:0", 0, 4, ("c4",))]
    finally:
        loop.close()


def test_a_partition_lost_and_given_back_is_read_again_from_where_the_group_stood(tmp_path: Path) -> None:
    """0..9 confirmed by the group, 10..19 stored but not yet confirmed when the session expired (a GC pause);
    the partition comes straight back: read again from 10, and the stored copy of 10..19 is left out."""
    loop = asyncio.new_event_loop()
    try:
        source, consumer = source_with_saved_position(tmp_path, 0), ChainConsumer(group_offset=0)
        source._loop = loop
        assign(source, consumer)
        token = source.partitions[PARTITION].token
        first, second = stored_unconfirmed(source, 10, 1, "c1"), stored_unconfirmed(source, 20, 2, "c1")
        store(source, 20)  # the saved position: 20, by this assignment
        source._on_group_commit(None, [TopicPartition("t", 0, 10)])
        source._on_lost(cast(Consumer, consumer), [TopicPartition(*PARTITION)])
        consumer.group_offset, consumer.metadata = 10, encode_metadata("", [(token, 0)])
        assign(source, consumer)
        assert consumer.started == {PARTITION: 10}, "not at the saved 20: 10..19 would be delivered by nobody"
        source._decide_ended(cast(Consumer, consumer))
        run_released(source, loop)
        assert first.released and second.released
        assert source.context.drops is not None
        assert source.context.drops.rules == [DropRule("bus", "t:0", 10, 2, ("c1",))]
    finally:
        loop.close()


def test_a_cut_made_at_one_start_holds_at_the_next_even_without_the_brokers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = source_that_stored(tmp_path, frozenset({"c1"}), "a1", 0, 40)
    assert [r.offset for r in prepared(source, GroupOffset(50, "id1", [("a1", 0), ("b2", 20)]), monkeypatch)] == [20]
    positions, drops = PositionStore(tmp_path / "positions.json"), RecordDrops(tmp_path)  # the next start
    positions.load()
    drops.load({"c1"})
    context = SourceContext(positions, DeadLetterStore(tmp_path / "dead"), FakeClock(0.0), tmp_path, drops=drops,
                            buffered_chunks=frozenset({"c1"}))
    again = KafkaSource("bus", source.config, context)
    assert prepared(again, None, monkeypatch) == [DropRule("bus", "t:0", 20, 0, ("c1",))], "the saved rule holds"
    consumer = StandInConsumer(group_offset=None)  # nor can the group's offsets be read at assignment
    assign(again, consumer)
    assert consumer.started == {PARTITION: 20}, "40 would skip 20..39, which the saved rule leaves out"
