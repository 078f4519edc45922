"""KafkaSource: consume topics in a consumer group; offsets move only after the buffers hold the records.

Where a partition starts, and why nothing already in the buffers is taken twice:

* Each batch carries a position ``kafka://topic/partition`` at its next offset, saved by
  the committer in ``positions.json`` atomically with the batch's frames, with the token of
  the assignment that read it (see :mod:`ownership`). After a kill -9 the group's committed
  offset may lag behind it, and on assignment the consumer seeks to whichever of the two
  is further (another member may have moved the group past our saved position while it
  held the partition), unless ``prepare`` found that what we stored past the group's offset
  is another owner's to deliver: then from the group's offset.
* A saved position carries its topic's id (Kafka's UUID, as its fingerprint), and so does each
  offset committed to the group (its metadata): a topic deleted and created again under the
  same name starts from its beginning (Kafka drops the group's offsets with the old topic), not
  from an offset of the old one, which would skip the new one's first messages.
* Once a commit holding a batch is durable, ``on_commit`` records its offset; the consume
  thread commits it to the group at its next step (asynchronously), which is what other
  members start from and what the lag is measured against. Nothing is committed to the
  group before the buffers hold it.
* When partitions are revoked (a rebalance, or our stop), the consume thread waits, for a
  bounded time, until every batch of those partitions already handed to the pipeline is
  committed, and commits their offsets synchronously before letting them go: a clean
  hand-over takes nothing twice. A batch still on its way when the wait runs out (a full
  buffer holds it) is left to the partition's next owner: the committer asks the source
  (``LineBatch.claim``) just before it stores a batch, and one whose assignment has ended
  is dropped there, unstored, to be read again by whoever holds the partition now, us
  included if it is given back. Only batches already inside a commit when the partition
  goes are waited for to the end (a commit takes milliseconds; a failing disk longer: after
  another bounded wait such a batch, once stored, is held back and settled with the group,
  ``_decide_ended``). Lost partitions (our session expired) are dropped the same way.
  While a batch waits downstream (a full buffer), the partitions are paused and the group
  still polled (``_hand_on``): a rebalance is not held up for librdkafka's
  ``max.poll.interval.ms``, nor do we drop out of the group.
* After a kill -9 the next owner starts at the group's offset and reads again what the dead
  process had stored but not yet committed to the group (the offsets go to the group within
  a step of the commit). Neither copy is delivered twice (:mod:`ownership`): a chunk holding
  a batch is not delivered until the group has the batch's offset (``LineBatch.confirm``,
  ``_confirmed``), and at the next start ``prepare`` reads from the owners' chain in the
  group's offset metadata where the member that took over started, and leaves our stored
  records past it out of the buffers (a ``DropRule``). The records' ids come from (topic,
  partition, offset) too, so Elasticsearch would absorb a repeat anyway.
* Static group membership (KIP-345, ``group.instance.id``, see :func:`instance_id`) makes the
  usual crash a pause: a member killed and restarted (systemd ``Restart=on-failure``) within
  ``session_timeout`` gets its own partitions back without a rebalance, nobody else reads
  them meanwhile, and ``_on_assign`` starts them at the group's offset or our saved
  position. A member that stays down longer loses its partitions to the others once its
  session times out, and the previous point settles what it had stored.

Static membership changes a clean stop too: librdkafka does not send LeaveGroup for a static
member when it closes (KIP-345: only the session timeout ends a static membership), so a
stopped member's partitions wait up to ``session_timeout`` before the others take them, from
the offsets our revoke committed synchronously (nothing twice, only a pause). A restart
within that time gets them back at once, without any rebalance. ``instance_id = ""`` gives
dynamic membership (immediate hand-over at a clean stop) for those who prefer it.

A member fenced by another process joining with the same instance id (two daemons
configured with one ``instance_id``; librdkafka's fatal FENCED_INSTANCE_ID) stops consuming
and says so in the log, ``status`` and ``/health`` until it is restarted: rejoining would
fence the other process in turn, each round taking records twice, and exiting would let
systemd do just that.

Each message value is one record. A value holding newlines (pretty-printed JSON) is
re-encoded on one line; one that does not parse then goes to the dead-letter store here,
and every other bad value (not JSON, not UTF-8, not an object) is dead-lettered by the
record processor, with ``path = kafka://topic/partition`` and the message's offset. The
offset of a dead-lettered message is committed like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from pipeline.buffer.chunk import Hold
from pipeline.buffer.drops import DropRule
from pipeline.deadletter import line_fields
from pipeline.outputs.kafka.client import ClientErrors, client_settings
from pipeline.sources.base import Emit, LineBatch, SourceContext
from pipeline.sources.kafka.config import KafkaSourceConfig
from pipeline.sources.kafka.ownership import (
    GroupOffset,
    chain_for,
    decode_metadata,
    drop_from,
    encode_metadata,
    new_token,
)
from pipeline.sources.tail.checkpoint import FilePosition

log = logging.getLogger("logferry.source.kafka")
POLL_SECONDS = 0.2
CONFIRM_POLL_SECONDS = 0.01  # the wait for messages while batches are on their way to the group (``_confirming``)
REVOKE_WAIT_SECONDS = 10.0  # how long a revoke waits for batches in flight to be committed
# ... and then for the batches already inside a commit (milliseconds, unless the disk fails) to finish.
COMMITTING_WAIT_SECONDS = 10.0
# A batch waiting downstream longer than this pauses fetching and keeps the group polled (``_hand_on``);
# shorter waits are the pipeline's ordinary back-pressure, where a pause would only drop what was fetched.
PAUSE_AFTER_SECONDS = 1.0
STOP_WAIT_SECONDS = 5.0
PREPARE_TIMEOUT_SECONDS = 15.0  # reading the group's offsets at start, before the outputs deliver anything
DECIDE_SECONDS = 5.0  # between asks of the group about batches of assignments that ended unconfirmed
STOP_COMMITTING_WAIT_SECONDS = 2.0  # at a stop the committer may be gone (stopped by the shutdown deadline)
# librdkafka's fetch and queue bounds. Each fetched byte is held twice or more at a step's peak (the
# queue, the messages taken, the batches built from them): 8 MiB of each held 200 MB resident in
# benchmarks/kafka_source.py, 2 MiB holds 110-125 MB at the same rate.
FETCH_BYTES = 2 * 1024 * 1024
QUEUED_BYTES = 2 * 1024 * 1024
Partition = tuple[str, int]
ILLEGAL_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")  # a group.instance.id is limited to a topic name's characters
MAX_ID_LENGTH = 249


def default_instance_id(source: str, state_dir: Path, hostname: str) -> str:
    """The static member id of ``source`` when ``instance_id`` is not set: ``logferry-<host>-<source>-<dir hash>``.

    Stable across restarts (the host name, the source's name and the state directory do not
    change), and unique per daemon: a state directory is locked by one daemon at a time, so two
    daemons of one host in one group differ by its hash (8 hex digits of the SHA-256 of its
    resolved path), where the host and source names alone would fence each other. The source's
    name keeps two kafka sources of one daemon in one group apart. Characters a
    ``group.instance.id`` may not hold become ``-``; the host and source part is cut so the whole
    stays within 249 characters.

    >>> default_instance_id("bus", Path("/var/lib/logferry"), "indexer-1.example")
    'logferry-indexer-1.example-bus-57063eb0'
    """
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    head = ILLEGAL_ID_CHARS.sub("-", f"logferry-{hostname}-{source}")
    return f"{head[:MAX_ID_LENGTH - len(digest) - 1]}-{digest}"


def instance_id(source: str, config: KafkaSourceConfig, state_dir: Path) -> str | None:
    """The source's ``group.instance.id``: ``config.instance_id``, its default, or None (dynamic) for ``""``.

    >>> instance_id("bus", KafkaSourceConfig(type="kafka", brokers=["k:9092"], topics=["t"], group_id="g", tag="x",
    ...                                      instance_id=""), Path("/var/lib/logferry")) is None
    True
    """
    if config.instance_id is None:
        return default_instance_id(source, state_dir, os.uname().nodename)
    return config.instance_id or None


def partition_key(topic: str, partition: int) -> str:
    """The position key (and the records' id prefix) of a partition.

    >>> partition_key("agents", 3)
    'agents:3'
    """
    return f"{topic}:{partition}"


def partition_of(key: str) -> Partition:
    """The partition of a position key (a topic name holds no ``:``).

    >>> partition_of("agents:3")
    ('agents', 3)
    """
    topic, part = key.rsplit(":", 1)
    return topic, int(part)


def partition_path(topic: str, partition: int) -> str:
    """The path shown in status and dead letters for a partition.

    >>> partition_path("agents", 3)
    'kafka://agents/3'
    """
    return f"kafka://{topic}/{partition}"


def one_line(value: bytes) -> bytes | None:
    """The value as one JSON line (re-encoded if it spans several), or None if it spans several and does not parse.

    >>> one_line(b'{"a": 1}'), one_line(b'{\\n  "a": 1\\n}'), one_line(b'{\\n nope')
    (b'{"a": 1}', b'{"a":1}', None)
    """
    if b"\n" not in value and b"\r" not in value:
        return value
    try:
        return orjson.dumps(orjson.loads(value))
    except orjson.JSONDecodeError:
        return None


@dataclass
class PartitionState:
    """What status shows of one assigned partition, and where it stands past transaction markers."""

    committed: int  # next offset durable in the buffers (or where consumption starts)
    high: int = -1  # the broker's high watermark as last fetched; -1 until known
    read_to: int = -1  # the next offset after the last message the consumer returned (start: where it started)
    # The consumer's position when it is past ``read_to``: only records a read_committed consumer never returns
    # (a transaction's commit marker, aborted records) lie between. -1 when it is not.
    past_markers: int = -1
    started: int = -1  # where this assignment started (the group's offset, or our saved position)
    # The topic's id (Kafka's UUID), saved with each position as its fingerprint: a topic deleted and created again
    # under its name has another, and our old positions mean nothing in it. "" when it could not be read.
    topic_id: str = ""
    # This assignment's token, and the owners' chain its offsets carry to the group (see ownership.py).
    token: str = ""
    owners: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.read_to < 0:
            self.read_to = self.committed
        if self.started < 0:
            self.started = self.committed

    @property
    def origin(self) -> int:
        """Where this assignment took over the partition (its entry in the owners' chain: see ownership.py)."""
        return self.owners[-1][1] if self.owners else self.started

    def caught_up_to(self) -> int:
        """``committed``, or the position past the markers once every message before them is committed.

        Without this a partition written by a transactional producer (logferry's kafka output) would show
        a lag of 1 for ever, its last commit marker, and so would the group's offset to monitoring tools.

        >>> state = PartitionState(committed=10, read_to=10, past_markers=11)
        >>> state.caught_up_to(), PartitionState(committed=8, read_to=10, past_markers=11).caught_up_to()
        (11, 8)
        """
        if self.committed == self.read_to and self.past_markers > self.committed:
            return self.past_markers
        return self.committed


class KafkaSource:
    """Consume ``config.topics`` in group ``config.group_id`` and emit one batch per partition per step."""

    def __init__(self, name: str, config: KafkaSourceConfig, context: SourceContext) -> None:
        self.name = name
        self.config = config
        self.positions = context.positions
        self.context = context
        self.dead_letters = context.dead_letters
        self.clock = context.clock
        self.errors = ClientErrors()
        self.instance_id = instance_id(name, config, context.state_dir)  # None: dynamic membership
        self.fenced: str | None = None  # set once another consumer took our instance id: we consume no more
        self.partitions: dict[Partition, PartitionState] = {}  # assigned now
        self.messages = 0
        self._stop = threading.Event()
        self._lock = threading.Condition()  # guards the six below and ``partitions``, shared with the consume thread
        self._in_flight: Counter[Partition] = Counter()  # batches emitted, not yet committed (or dropped)
        self._committing: Counter[Partition] = Counter()  # of those, the ones claimed by a commit under way
        self._revoking: dict[Partition, PartitionState] = {}  # no longer claimable, their commits still awaited
        self._admin: AdminClient | None = None  # made with the consumer
        self._durable: dict[Partition, int] = {}  # next offsets committed to the buffers, not yet to the group
        self._consume_error: str | None = None  # the last error the consumer reported, logged once
        self._settled = asyncio.Event()  # set on the event loop whenever a batch is committed
        # Stored batches whose offsets the group has not yet confirmed: their chunks are held (LineBatch.confirm),
        # by partition, with the assignment they were read in and their end.
        self._unconfirmed: dict[Partition, list[tuple[PartitionState, int, Hold]]] = {}
        # Those of assignments that ended first (a revoke whose commit failed, lost partitions): ``_decide_ended``
        # asks the group who delivers them.
        self._ended: list[tuple[Partition, PartitionState, list[tuple[int, Hold]]]] = []
        self._next_decision = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Finish the current step and return from ``run``."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """Each assigned partition's lag, their sum, the static member id (None: dynamic), and any problem."""
        partitions = self.lag()
        return {"partitions": partitions, "lag": sum(p["lag"] or 0 for p in partitions),
                "instance_id": self.instance_id, "problem": self.problem()}

    def lag(self) -> list[dict[str, Any]]:
        """Each assigned partition's consumer lag (messages on the broker not yet in the buffers) and its
        batches in flight (read, on their way to the buffers: a full buffer holds them)."""
        with self._lock:
            assigned = [(p, state, self._in_flight[p]) for p, state in sorted(self.partitions.items())]
        rows = []
        for (topic, part), state, in_flight in assigned:
            lag = max(state.high - state.caught_up_to(), 0) if state.high >= 0 else None
            rows.append({"topic": topic, "partition": part, "path": partition_path(topic, part),
                         "committed": state.committed, "high_watermark": state.high, "lag": lag,
                         "batches_in_flight": in_flight})
        return rows

    def problem(self) -> str | None:
        """Fenced out of the group; or why nothing is assigned yet: refused credentials, no broker, a missing topic."""
        if self.fenced is not None:
            return self.fenced
        if self.partitions:
            return None
        brokers, last = ",".join(self.config.brokers), self.errors.last
        if last is not None and self.errors.refused_credentials():
            return (f"source {self.name}: the brokers {brokers} refused the credentials of {self.config.username} "
                    f"({self.config.sasl_mechanism}): {last.str()}")
        if last is not None:
            return f"source {self.name}: cannot reach the brokers {brokers}: {last.str()}"
        if self._consume_error is not None:
            return f"source {self.name}: {self._consume_error}"
        return None

    async def run(self, emit: Emit) -> None:
        """Consume until stopped; then hand over the partitions cleanly (see the module docstring)."""
        # One thread of its own for the consumer: librdkafka's callbacks run there, and the messages'
        # memory comes from one malloc arena instead of one per worker thread of the default pool.
        thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{self.name}")
        loop = self._loop = asyncio.get_running_loop()
        try:
            consumer = await loop.run_in_executor(thread, self._open)
            try:
                while not self._stop.is_set():
                    if self.fenced is not None:
                        # The consumer is dead (a fatal error) and rejoining would fence the other process:
                        # wait here, unhealthy, for the operator's restart (see the module docstring).
                        await asyncio.sleep(POLL_SECONDS)
                        continue
                    messages, positions = await loop.run_in_executor(thread, self._step, consumer)
                    batches = self._batches(messages)
                    self._note_positions(positions)
                    del messages  # not held while the batches wait for room downstream
                    for partition, fetched_in, batch in batches:
                        if self._in_flight_now(partition, fetched_in):
                            await self._hand_on(emit, batch, consumer, thread)
            finally:
                await self._wait_for_commits(STOP_WAIT_SECONDS)
                await loop.run_in_executor(thread, self._close, consumer)
        finally:
            thread.shutdown(wait=False)

    def _in_flight_now(self, partition: Partition, fetched_in: PartitionState) -> bool:
        """Count a batch in flight, unless its partition was revoked (or revoked and given back, which
        started it anew) since its messages were fetched: the partition's owner reads them again."""
        with self._lock:
            if self.partitions.get(partition) is not fetched_in:
                return False
            self._in_flight[partition] += 1
            return True

    async def _hand_on(self, emit: Emit, batch: LineBatch, consumer: Consumer, thread: ThreadPoolExecutor) -> None:
        """``emit(batch)``; while it waits (a full buffer: an output down), keep talking to the group.

        Without a poll for ``max.poll.interval.ms`` (5 minutes) librdkafka leaves the group, and a
        rebalance meanwhile would wait that long for us. So the assigned partitions are paused (nothing
        more is fetched) and the consumer is polled every ``POLL_SECONDS``: heartbeats, rebalances (a
        revoke waits ``REVOKE_WAIT_SECONDS`` for the batches in flight, then lets go) and the offsets of
        what got committed meanwhile. Fetching resumes where the messages handed to us ended.
        """
        loop = asyncio.get_running_loop()
        handed = asyncio.ensure_future(emit(batch))
        try:
            await asyncio.wait({handed}, timeout=PAUSE_AFTER_SECONDS)
            if not handed.done():
                try:
                    while not handed.done():
                        await loop.run_in_executor(thread, self._keep_alive, consumer)
                        await asyncio.wait({handed}, timeout=POLL_SECONDS)
                finally:
                    await loop.run_in_executor(thread, self._resume, consumer)
            handed.result()
        finally:
            if not handed.done():  # cancelled (a stop): the batch was not handed on
                handed.cancel()
                await asyncio.gather(handed, return_exceptions=True)

    # -- the consume thread --------------------------------------------------------------

    def _open(self) -> Consumer:
        cfg = self.config
        settings = client_settings(cfg, f"logferry-{self.name}", self.errors)
        if self.instance_id is not None:
            settings["group.instance.id"] = self.instance_id
        settings.update({
            "error_cb": self._on_client_error,
            "group.id": cfg.group_id, "enable.auto.commit": False, "enable.auto.offset.store": False,
            "isolation.level": "read_committed", "auto.offset.reset": cfg.start_from,
            "session.timeout.ms": int(cfg.session_timeout * 1000),
            # A fetch of 2 MiB still keeps a catch-up bound by the pipeline, not by fetch round trips.
            "fetch.max.bytes": FETCH_BYTES, "max.partition.fetch.bytes": FETCH_BYTES,
            # Messages fetched ahead wait in librdkafka's queue: bounded (its default is 64 MiB).
            "queued.max.messages.kbytes": QUEUED_BYTES // 1024,
            # ... and once that queue is full, fetch again soon after it drains (librdkafka waits 1 s).
            "fetch.queue.backoff.ms": 10,
            "on_commit": self._on_group_commit,
        })
        consumer = Consumer(settings)
        self._admin = AdminClient(client_settings(cfg, f"logferry-{self.name}-ids"))  # for the topics' ids
        consumer.subscribe(list(cfg.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        membership = f"as static member {self.instance_id}" if self.instance_id else "as a dynamic member"
        log.info("source %s: consuming %s in group %s %s", self.name, ",".join(cfg.topics), cfg.group_id, membership)
        return consumer

    def _on_client_error(self, error: KafkaError) -> None:
        """librdkafka's error_cb: kept for ``problem``; a fatal error (our instance id fenced) stops the source."""
        self.errors(error)
        if error.code() == KafkaError._FATAL or error.fatal():
            self._fatal(error)

    def _fatal(self, error: KafkaError) -> None:
        """The consumer cannot go on. librdkafka reports a fenced static member as _FATAL with the broker's words."""
        if self.fenced is not None:
            return
        if "fenced" in error.str().lower():
            self.fenced = (f"source {self.name}: fenced out of group {self.config.group_id}: another consumer joined "
                           f"with the same instance id {self.instance_id} (two daemons with one instance_id?); "
                           f"this source consumes nothing until logferry is restarted ({error.str()})")
        else:
            self.fenced = (f"source {self.name}: the consumer of group {self.config.group_id} failed for good "
                           f"(instance id {self.instance_id}); it consumes nothing until logferry is restarted "
                           f"({error.str()})")
        log.error("%s", self.fenced)
        with self._lock:
            self._forget(set(self.partitions))  # status shows none held, and the problem

    def _step(self, consumer: Consumer) -> tuple[list[Message], dict[Partition, int]]:
        """Commit what became durable, then take the next messages, with the consumer's position in each assigned
        partition after them (and refresh the watermarks)."""
        self._commit_durable(consumer, asynchronous=True)
        self._decide_ended(consumer)
        # consume(n, timeout) waits out its timeout unless n messages come, and librdkafka's bounded queue
        # may hold fewer: take what is there at once, and wait only for a first message when nothing is.
        limit = self.config.max_batch_messages
        messages = consumer.consume(limit, 0)
        if not messages:
            messages = consumer.consume(1, CONFIRM_POLL_SECONDS if self._confirming() else POLL_SECONDS)
            if messages:
                messages += consumer.consume(limit - 1, 0) if limit > 1 else []
        assigned = [TopicPartition(topic, part) for topic, part in list(self.partitions)]
        positions = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(assigned)} if assigned else {}
        for (topic, part), state in list(self.partitions.items()):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, part), cached=True)
            if high >= 0:
                state.high = high
        return messages, positions

    def _confirming(self) -> bool:
        """Whether batches are on their way to the group: handed on, stored but not yet committed to the group, or
        committed but not yet confirmed. Their chunks wait for that (``LineBatch.confirm``), and the offsets go to
        the group only at the next step: so it comes soon, not after a whole idle poll."""
        return bool(self._durable or any(self._unconfirmed.values()) or sum(self._in_flight.values()))

    def _keep_alive(self, consumer: Consumer) -> None:
        """Downstream is full: poll the group with every assigned partition paused (see ``_hand_on``)."""
        self._commit_durable(consumer, asynchronous=True)
        self._decide_ended(consumer)
        consumer.pause(consumer.assignment())  # again: a rebalance may have assigned partitions since
        fetched: dict[Partition, int] = {}  # the first offset of each partition fetched before the pause took effect
        for msg in consumer.consume(100, 0):  # rebalance callbacks run in here; messages are not expected
            error = msg.error()
            if error is None:
                fetched.setdefault((str(msg.topic()), int(msg.partition() or 0)), int(msg.offset() or 0))
            elif error.code() == KafkaError._FATAL or error.fatal():
                self._fatal(error)
        for (topic, part), offset in fetched.items():  # read again from there after the resume
            with contextlib.suppress(KafkaException):  # revoked meanwhile: its next owner reads it
                consumer.seek(TopicPartition(topic, part, offset))

    def _resume(self, consumer: Consumer) -> None:
        consumer.resume(consumer.assignment())

    def _commit_durable(self, consumer: Consumer, asynchronous: bool, only: set[Partition] | None = None) -> None:
        """Tell the group the offsets that became durable: of every assigned partition, or of ``only`` (being
        revoked: still ours until the revoke returns)."""
        with self._lock:
            ours = set(self.partitions) if only is None else only
            ready = {p: o for p, o in self._durable.items() if p in ours}
            for p in list(self._durable):
                if p in ready or self._held(p) is None:
                    del self._durable[p]  # sent now, or of a partition no longer ours: never sent
            # Each offset names its topic's id (the commit's metadata): a topic deleted and created again under
            # its name while we held it may get an offset of the old one, which ``_on_assign`` then ignores. And
            # the partition's owners, us last (see ownership.py).
            meta = {p: encode_metadata(state.topic_id, state.owners) for p in ready if (state := self._held(p))}
        offsets = [TopicPartition(t, p, o, metadata=meta.get((t, p), "")) for (t, p), o in ready.items()]
        if not offsets:
            return
        try:
            if asynchronous:
                consumer.commit(offsets=offsets, asynchronous=True)
            else:
                answered = consumer.commit(offsets=offsets, asynchronous=False)
                self._confirmed([tp for tp in answered or [] if tp.error is None])
        except KafkaException as exc:
            # The saved positions still hold these offsets; the group's only lags until the next commit.
            log.warning("source %s: committing offsets to the group failed: %s", self.name, exc)

    def _on_group_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to a commit: an offset the group refused is committed again at the next step.

        An asynchronous commit sent while the group rebalances (a killed member timing out) is
        refused after its offsets left ``_durable``; without this the group's offsets would stay
        behind until new messages arrive, which at the end of a topic is never.
        """
        failed = [tp for tp in partitions if error is not None or tp.error is not None]
        if error is None:
            self._confirmed([tp for tp in partitions if tp.error is None])
        if not failed:
            return
        with self._lock:
            for tp in failed:
                key = (tp.topic, tp.partition)
                state = self._held(key)
                # Only an offset the assignment holding the partition now has stored itself (not one an earlier
                # assignment sent, whose batches _decide_ended may leave out).
                if state is not None and tp.offset <= state.caught_up_to() and tp.offset > self._durable.get(key, -1):
                    self._durable[key] = tp.offset
        log.info("source %s: the group refused an offset commit (%s): it is tried again", self.name,
                 error or failed[0].error)

    def _confirmed(self, offsets: list[TopicPartition]) -> None:
        """The group took these offsets of ours: the chunks of the batches they cover may be delivered."""
        released = []
        with self._lock:
            for tp in offsets:
                partition = (tp.topic, tp.partition)
                state = self._held(partition)
                waiting = self._unconfirmed.get(partition, [])
                done = [hold for owner, end, hold in waiting if owner is state and end <= tp.offset]
                if done:
                    self._unconfirmed[partition] = [w for w in waiting if w[2] not in done]
                    released += done
        self._release(released)

    def _release(self, holds: list[Hold], rules: list[DropRule] | None = None) -> None:
        """Release ``holds`` on the event loop, once ``rules`` (if any) are saved and in force."""
        if not holds or self._loop is None:
            return
        drops = self.context.drops

        def release() -> None:
            if rules and drops is not None:
                drops.add(rules)
            for hold in holds:
                hold.release()
        self._loop.call_soon_threadsafe(release)

    def _decide_ended(self, consumer: Consumer) -> None:
        """Who delivers the unconfirmed batches of assignments that ended (see ownership.py): ours up to where the
        next owner started, left out past it; asked again every ``DECIDE_SECONDS`` while the group cannot say."""
        with self._lock:
            ended = list(self._ended)
        if not ended or time.monotonic() < self._next_decision:
            return
        self._next_decision = time.monotonic() + DECIDE_SECONDS
        try:
            answer = consumer.committed([TopicPartition(*partition) for partition, _, _ in ended], timeout=10)
        except KafkaException as exc:
            log.warning("source %s: cannot read the group's offsets (%s): batches of partitions no longer ours are "
                        "held until it can", self.name, exc)
            return
        groups = _group_offsets(answer)
        ended = [entry for entry in ended if entry[0] in groups]  # the others are asked again
        with self._lock:
            self._ended = [entry for entry in self._ended if entry not in ended]
        for partition, state, waiting in ended:
            cut = drop_from(groups[partition], state.topic_id, state.token, state.origin)
            past = [hold for end, hold in waiting if cut is not None and end > cut]
            rules = []
            if past and cut is not None:
                chunks = tuple(sorted({chunk for hold in past for chunk in hold.chunk_ids}))
                rules.append(DropRule(self.name, partition_key(*partition), cut, max(h.seq for h in past), chunks))
                log.warning("source %s: %s/%d from offset %d on is delivered by its next owner: left out of %d chunks "
                            "here", self.name, *partition, cut, len(chunks))
            elif cut is None:
                log.warning("source %s: the group cannot tell who delivers %s/%d past our last confirmed offset: the "
                            "batches stored here are delivered (some may be twice)", self.name, *partition)
            self._release([hold for _, hold in waiting], rules)

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        """Start each partition at the further of the group's offset and our saved position, or after the
        batches of it still on their way to the buffers (a partition given back to us)."""
        known = True
        described = self._describe({tp.topic for tp in assigned})  # asked now, awaited with the group's offsets
        try:
            committed = consumer.committed(assigned, timeout=30)
        except KafkaException as exc:
            # Without the group's offsets our saved ones still hold: at worst a partition another member
            # moved further is read again from ours (ids absorb it in Elasticsearch); nothing is skipped.
            log.warning("source %s: cannot read the group's offsets (%s): starting from the saved ones", self.name, exc)
            committed, known = assigned, False
        ours: list[str] = []  # partitions where our saved position is ahead of the group's: say so in the log
        ids = self._topic_ids(described)
        for tp in committed:
            partition = (tp.topic, tp.partition)
            saved = self.positions.get(self.name, partition_key(tp.topic, tp.partition))
            topic_id = ids.get(tp.topic) or (saved.fingerprint if saved is not None else "")
            group = decode_metadata(tp.offset, tp.metadata) if known else GroupOffset(-1, "", None)
            if group.offset >= 0 and group.topic_id and topic_id and group.topic_id != topic_id:
                log.warning("source %s: the group's offset %d of %s/%d is of an earlier topic of that name (id %s, "
                            "now %s): not used", self.name, tp.offset, tp.topic, tp.partition, group.topic_id, topic_id)
                tp.offset = OFFSET_BEGINNING
                group = GroupOffset(-1, "", None)
            if saved is not None and (cut := drop_from(group, saved.fingerprint, saved.owner, saved.owner_start)
                                      ) is not None and cut < saved.offset:
                # What we stored past ``cut`` is another owner's to deliver, or whoever reads it next: us, from there
                # (``prepare``, or _decide_ended for an assignment of ours that ended, leaves our copy out).
                saved = replace(saved, offset=cut)
            if saved is not None and saved.fingerprint and topic_id != saved.fingerprint:
                # Starting the new topic at the old one's offset would skip its first messages.
                log.warning("source %s: topic %s was deleted and created again (its id was %s, it is %s): partition "
                            "%d starts from the group's offset, not from our saved %d", self.name, tp.topic,
                            saved.fingerprint, topic_id, tp.partition, saved.offset)
                saved = None
                if tp.offset < 0:  # Kafka dropped the group's offsets with the old topic: from its start
                    tp.offset = OFFSET_BEGINNING
            ahead = saved is not None and (tp.offset < 0 or saved.offset > tp.offset)
            if saved is not None and ahead:
                ours.append(f"{tp.topic}/{tp.partition} {tp.offset}->{saved.offset}")
                tp.offset = saved.offset
            start = tp.offset if tp.offset >= 0 else 0
            # From the group's offset on we deliver this partition (what we stored past it and kept included).
            token = new_token()
            owners = chain_for(group if known else GroupOffset(start, "", None), token,
                               group.offset if group.offset >= 0 else start)
            with self._lock:
                self._durable.pop(partition, None)  # left by an earlier assignment: the group may be past it now
                self.partitions[partition] = PartitionState(start, topic_id=topic_id, token=token,
                                                                    owners=owners)
                if ahead and known:
                    # Durable in our buffers but never committed to the group (we were killed before
                    # that step): tell the group at the next step, or it stays behind until new messages.
                    # Not when the group's offset is unknown: ours may be behind another member's.
                    self._durable[partition] = start
        consumer.assign(committed)
        ahead_note = f" (starting past the group's offset: {', '.join(ours)})" if ours else ""
        log.info("source %s: assigned %s%s", self.name, _names(committed), ahead_note)

    async def prepare(self) -> None:
        """Before any output delivers: leave out of the buffers what another member delivers (ownership.py).

        For each partition we saved a position of, the group's offset and owners' chain say from where
        on our stored records were read again by the member that took the partition while we were down
        (or will be by whoever reads it next); a :class:`DropRule` leaves them out of every chunk the
        buffers hold, and the saved position is cut back to there for our next assignment of it.
        """
        saved = [p for p in self.positions.for_source(self.name) if p.owner]
        if not saved or self.context.drops is None:
            return
        try:
            group = await asyncio.get_running_loop().run_in_executor(None, self._ask_group, saved)
        except KafkaException as exc:
            log.warning("source %s: cannot read the group's offsets at start (%s): records stored before a restart "
                        "that another member read again meanwhile may be delivered twice", self.name, exc)
            return
        rules: list[DropRule] = []
        cut_back: dict[tuple[str, str], FilePosition | None] = {}
        for position in saved:
            topic, part = partition = partition_of(position.key)
            answered = group.get(partition)  # not answered: nothing is concluded
            cut = None if answered is None else drop_from(answered, position.fingerprint, position.owner,
                                                          position.owner_start)
            if cut is None or cut >= position.offset:
                continue
            if self.context.buffered_chunks:
                rules.append(DropRule(self.name, position.key, cut, self.positions.commit_seq,
                                      tuple(sorted(self.context.buffered_chunks))))
            # Saved too (the committer does not run yet): a start without the brokers must not start past it.
            cut_back[(self.name, position.key)] = replace(position, offset=cut)
            log.warning("source %s: %s/%d offsets %d to %d, stored here before the restart, are delivered by the "
                        "partition's next owner (another member took it, or whoever reads it next): left out here",
                        self.name, topic, part, cut, position.offset - 1)
        if rules:  # saved and in force before the positions say they were cut back
            await asyncio.to_thread(self.context.drops.add, rules)
        if cut_back:
            await asyncio.to_thread(self.positions.save_now, cut_back)

    def _ask_group(self, saved: list[FilePosition]) -> dict[Partition, GroupOffset]:
        """The group's offsets of the partitions of ``saved``, asked without joining the group (blocking)."""
        settings = client_settings(self.config, f"logferry-{self.name}-start", self.errors)
        settings.update({"group.id": self.config.group_id, "enable.auto.commit": False})
        consumer = Consumer(settings)
        try:
            asked = [TopicPartition(*partition_of(position.key)) for position in saved]
            answer = consumer.committed(asked, timeout=PREPARE_TIMEOUT_SECONDS)
        finally:
            consumer.close()
        return _group_offsets(answer)

    def _describe(self, topics: set[str]) -> dict[str, Future[Any]]:
        """Ask the brokers for ``topics``' descriptions (their ids), answered within 10 s (see ``_topic_ids``)."""
        if self._admin is None or not topics:
            return {}
        return dict(self._admin.describe_topics(TopicCollection(sorted(topics)), request_timeout=10))

    def _topic_ids(self, described: dict[str, Future[Any]]) -> dict[str, str]:
        """Each described topic's id, as far as the brokers told it (a topic left out is not checked)."""
        ids = {}
        for topic, future in described.items():
            try:
                ids[topic] = str(future.result().topic_id)
            except KafkaException as exc:
                log.warning("source %s: cannot read the id of topic %s (%s): its saved positions are taken as they "
                            "are", self.name, topic, exc)
        return ids

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        """Let the pipeline commit what it holds of these partitions, commit it to the group, then let go.

        What has not reached a commit when the wait runs out is dropped by ``_claim`` (the next owner reads
        it); what a commit has claimed is waited for, so its offset reaches the group before we let go.
        """
        gone = {(tp.topic, tp.partition) for tp in revoked}
        wait = 0.0 if self._stop.is_set() else REVOKE_WAIT_SECONDS  # at a stop, run() has waited already
        with self._lock:
            self._lock.wait_for(lambda: not any(self._in_flight[p] for p in gone), wait)
            left = sum(self._in_flight[p] - self._committing[p] for p in gone)
            for p in gone:  # from here on a commit drops their batches (``_claim``)
                if (state := self.partitions.pop(p, None)) is not None:
                    self._revoking[p] = state
            committing = STOP_COMMITTING_WAIT_SECONDS if self._stop.is_set() else COMMITTING_WAIT_SECONDS
            self._lock.wait_for(lambda: not any(self._committing[p] for p in gone), committing)
            stuck = sum(self._committing[p] for p in gone)
        self._unconfirmed_again(gone)
        self._commit_durable(consumer, asynchronous=False, only=gone)
        self._forget(gone)
        log.info("source %s: revoked %s", self.name, _names(revoked))
        if left:
            log.info("source %s: %d batches of the revoked partitions were not yet stored: they are dropped and "
                     "read again by the partitions' next owner", self.name, left)
        if stuck:
            log.warning("source %s: %d batches of the revoked partitions were still being committed after %.0f s "
                        "(a failing disk?): once stored, they are held back until the group says who delivers them",
                        self.name, stuck, committing)

    def _on_lost(self, consumer: Consumer, lost: list[TopicPartition]) -> None:
        """Partitions taken away without a hand-over (our session expired): nothing may be committed for them."""
        self._forget({(tp.topic, tp.partition) for tp in lost})
        log.warning("source %s: lost %s (session expired)", self.name, _names(lost))

    def _forget(self, gone: set[Partition]) -> None:
        with self._lock:
            for p in gone:
                self._durable.pop(p, None)
                self.partitions.pop(p, None)
                self._revoking.pop(p, None)
                waiting = self._unconfirmed.pop(p, [])
                for state in {id(owner): owner for owner, _, _ in waiting}.values():
                    self._ended.append((p, state, [(end, hold) for owner, end, hold in waiting if owner is state]))
                    self._next_decision = 0.0  # asked at the next step; only a retry waits DECIDE_SECONDS

    def _held(self, partition: Partition) -> PartitionState | None:
        """The state of ``partition`` while it is ours: assigned, or being revoked (its commits still awaited)."""
        return self.partitions.get(partition) or self._revoking.get(partition)

    def _unconfirmed_again(self, partitions: set[Partition]) -> None:
        """Have the next (synchronous) commit send again what these partitions stored and the group has not yet
        confirmed: an asynchronous commit's answer may still be on its way, and a revoke or a close would not wait
        for it (the chunks would stay held: settled with the group later, or at the next start)."""
        with self._lock:
            for p in partitions:
                if self._unconfirmed.get(p) and (state := self._held(p)) is not None:
                    self._durable[p] = max(self._durable.get(p, -1), state.caught_up_to())

    def _close(self, consumer: Consumer) -> None:
        self._admin = None  # no close() of its own: dropped, or every reload would keep one (threads, connections)
        self._unconfirmed_again(set(self.partitions))
        self._commit_durable(consumer, asynchronous=False)
        self._next_decision = 0.0
        self._decide_ended(consumer)  # before the flush at a stop: what it settles goes out now, not at the next start
        # A dynamic member leaves the group at once: the others take over without waiting for a timeout.
        # A static one does not (KIP-345): its partitions wait for our restart, or session_timeout.
        try:
            consumer.close()
        except KafkaException as exc:  # e.g. fenced: nothing left to hand over
            log.warning("source %s: closing the consumer: %s", self.name, exc)

    # -- batches (event loop) ----------------------------------------------------------

    def _batches(self, messages: list[Message]) -> list[tuple[Partition, PartitionState, LineBatch]]:
        """The messages of each assigned partition as batches, with the partition's assignment they came in."""
        by_partition: dict[Partition, list[Message]] = defaultdict(list)
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._FATAL or error.fatal():
                    self._fatal(error)
                elif error.code() != KafkaError._PARTITION_EOF and error.str() != self._consume_error:
                    self._consume_error = error.str()  # e.g. a topic that does not exist (yet)
                    log.warning("source %s: %s", self.name, error.str())
                continue
            by_partition[(str(msg.topic()), int(msg.partition() or 0))].append(msg)
        batches = []
        for (topic, part), msgs in by_partition.items():
            state = self.partitions.get((topic, part))
            if state is not None:  # else revoked while these were fetched: the new owner reads them
                state.read_to = int(msgs[-1].offset() or 0) + 1
                batches += [((topic, part), state, self._batch(topic, part, state, piece))
                            for piece in self._pieces(msgs)]
        self.messages += sum(len(m) for m in by_partition.values())
        return batches

    def _note_positions(self, positions: dict[Partition, int]) -> None:
        """Where each partition's consumer stands past transaction markers (see ``PartitionState.caught_up_to``).

        Newly past the markers with every message before them committed, the group is told that position: its
        offset then shows no lag to monitoring tools either. Nothing but markers lies between, so a start from
        it skips no message.
        """
        with self._lock:
            for partition, position in positions.items():
                state = self.partitions.get(partition)
                if state is None or position < 0:
                    continue
                before = state.caught_up_to()
                state.past_markers = position if position > state.read_to else -1
                if state.caught_up_to() > before:
                    self._durable[partition] = max(state.caught_up_to(), self._durable.get(partition, 0))

    def _pieces(self, msgs: list[Message]) -> list[list[Message]]:
        """``msgs`` cut into runs of at most ``max_batch_bytes`` (a larger message alone)."""
        pieces: list[list[Message]] = [[]]
        size, limit = 0, self.config.max_batch_bytes
        for msg in msgs:
            length = len(msg) if msg.value() is not None else 0
            if pieces[-1] and size + length > limit:
                pieces.append([])
                size = 0
            pieces[-1].append(msg)
            size += length
        return pieces

    def _batch(self, topic: str, part: int, fetched_in: PartitionState, msgs: list[Message]) -> LineBatch:
        key, path = partition_key(topic, part), partition_path(topic, part)
        lines: list[bytes] = []
        offsets: list[int] = []
        dead: list[dict[str, Any]] = []
        for msg in msgs:
            value, offset = msg.value() or b"", int(msg.offset() or 0)
            line = one_line(value)
            if line is None:
                dead.append(self._dead(key, path, offset, value, "invalid JSON spread over several lines"))
                continue
            lines.append(line)
            offsets.append(offset)
        end = int(msgs[-1].offset() or 0) + 1
        position = FilePosition(self.name, key, path, end, fetched_in.topic_id, 0, owner=fetched_in.token,
                                owner_start=fetched_in.origin)
        if lines:
            lines.append(b"")  # the last line's newline, without copying the joined block again
        batch = LineBatch(self.name, self.config.tag, key, path, int(msgs[0].offset() or 0), end,
                          b"\n".join(lines), position, dead=dead, offsets=offsets)
        batch.on_commit = self._committed_callback((topic, part), fetched_in, end)
        batch.claim = self._claim_callback((topic, part), fetched_in, end)
        batch.confirm = self._confirm_callback((topic, part), fetched_in, end)
        return batch

    def _claim_callback(self, partition: Partition, fetched_in: PartitionState, end: int) -> Any:
        def claim() -> bool:
            """Whether a commit may store this batch: not once the assignment it was read in has ended."""
            with self._lock:
                if self.partitions.get(partition) is fetched_in:
                    self._committing[partition] += 1
                    return True
                self._in_flight[partition] -= 1  # dropped: its partition's owner reads it again
                self._lock.notify_all()
            self._settled.set()
            return False
        return claim

    def _confirm_callback(self, partition: Partition, fetched_in: PartitionState, end: int) -> Any:
        def confirm(hold: Hold) -> None:
            """Hold the batch's chunks until the group has its offset (``_confirmed``), or, its assignment ended
            meanwhile (a revoke that ran out of time while the commit was stuck), until the group says who
            delivers it (``_decide_ended``)."""
            with self._lock:
                if self._held(partition) is fetched_in:
                    self._unconfirmed.setdefault(partition, []).append((fetched_in, end, hold))
                else:
                    self._ended.append((partition, fetched_in, [(end, hold)]))
                    self._next_decision = 0.0
        return confirm

    def _committed_callback(self, partition: Partition, fetched_in: PartitionState, end: int) -> Any:
        def committed() -> None:
            with self._lock:
                self._in_flight[partition] -= 1
                self._committing[partition] -= 1
                # Only for the assignment that read it: one given back since reads the partition again from where
                # the group stood, and this batch is settled with the group (_decide_ended), not sent to it.
                if (state := self._held(partition)) is fetched_in:
                    state.committed = max(state.committed, end)
                    durable = max(end, state.caught_up_to())  # the last batch before a commit marker: past it
                    self._durable[partition] = max(durable, self._durable.get(partition, 0))
                self._lock.notify_all()
            self._settled.set()
        return committed

    def _dead(self, key: str, path: str, offset: int, value: bytes, reason: str) -> dict[str, Any]:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.time()))
        return {"id": f"{self.name}:{key}:{offset}", "time": when, "source": self.name, "path": path,
                "offset": offset, "reason": reason, **line_fields(value)}

    async def _wait_for_commits(self, seconds: float) -> None:
        """Until every emitted batch is committed, or ``seconds`` (a full buffer may hold them)."""
        deadline = self.clock.monotonic() + seconds
        while sum(self._in_flight.values()) and (left := deadline - self.clock.monotonic()) > 0:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), left)


def _group_offsets(answer: list[TopicPartition]) -> dict[Partition, GroupOffset]:
    """The group's offsets ``committed()`` answered, as ownership.py reads them; a partition answered with an
    error is left out (it is asked again, or decides nothing)."""
    return {(tp.topic, tp.partition): decode_metadata(tp.offset, tp.metadata) for tp in answer if tp.error is None}


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}@{tp.offset}" for tp in partitions) or "nothing"

