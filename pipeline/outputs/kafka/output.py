"""KafkaOutput: each chunk produced in one Kafka transaction, exactly once across crashes.

Delivery of a chunk (in a worker thread; one transaction at a time per producer):
``begin_transaction`` → every record of the chunk (its id in a header) → the chunk's
marker in the state topic (:mod:`pipeline.outputs.kafka.state`) → ``commit_transaction``.
Readers with ``isolation.level = read_committed`` see the whole chunk or none of it.

The ``transactional.id`` is stable per host and output, so a daemon restarted after a
kill -9 fences its predecessor at ``init_transactions``, which also aborts the
transaction the predecessor left open. The output then reads its last committed marker:
a chunk named there was committed but not yet deleted from the buffer when the daemon
died, and is skipped instead of produced twice.

With ``buffer.workers = N`` the output runs N transactional producers (``<id>``, ``<id>#1``,
…), N chunks in flight. Any error during a delivery drops that producer; the chunk is
retried on the same slot, which starts over with a new producer (``init_transactions``,
marker read): that settles whether the failed transaction was committed.

A record over the topic's ``max.message.bytes`` goes to the dead-letter store instead of
failing its chunk's transaction forever. Its entry is written before the transaction commits
(never a record skipped without one), once: a retried transaction of the chunk writes only
entries it has not written yet. A kill -9 between the entry and the commit writes it again
at the restart's retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # not re-exported for type checkers
from confluent_kafka.cimpl import NewTopic

from pipeline.buffer.chunk import Chunk
from pipeline.deadletter import line_fields
from pipeline.errors import RetryableError
from pipeline.outputs.base import OutputContext
from pipeline.outputs.kafka.client import ClientErrors, client_settings
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.outputs.kafka.encoder import RECORD_OVERHEAD, Message, MessageEncoder
from pipeline.outputs.kafka.state import (
    STATE_TOPIC_CONFIG,
    StateReadError,
    marker_partition,
    marker_value,
    read_markers,
    slot_key,
)
from pipeline.transforms.enrich import iso_millis

log = logging.getLogger("logferry.output.kafka")
DEFAULT_MAX_MESSAGE_BYTES = 1048588  # the broker's default for topics without their own
MAX_BATCH_BYTES = 1_000_000
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes


@dataclass
class Session:
    """A producer that has fenced its predecessors, and what the state topic says it delivered."""

    key: str  # its transactional.id, also its marker key
    producer: Producer
    delivered: set[str]  # chunk ids of its last committed marker
    state_partition: int
    max_record_bytes: int  # a record estimated larger than this is dead-lettered


class KafkaOutput:
    """Produces chunks to ``config.topic`` in transactions (see the module docstring)."""

    def __init__(self, config: KafkaOutputConfig, context: OutputContext) -> None:
        self.config = config
        self.context = context
        self.name = context.name
        self.transactional_id = config.transactional_id or f"logferry-{context.hostname}-{context.name}"
        self.encoder = MessageEncoder(config)
        self.start_error: str | None = None  # what the check at start found wrong (status, health)
        self.rejected_records = 0
        self.skipped_chunks = 0  # found already committed at a restart
        slots = config.buffer.workers
        self._sessions: list[Session | None] = [None] * slots
        self._slot_locks = [asyncio.Lock() for _ in range(slots)]  # one open transaction per transactional.id
        self._in_use = [threading.Lock() for _ in range(slots)]  # held by the worker thread using the slot
        self._retired: set[str] = set()  # chunks of producers of an earlier, larger ``workers``
        self._unsettled: dict[str, int] = {}  # chunk id → the slot whose failed transaction it was in
        # chunk id → its records (by index in the chunk) dead-lettered by a transaction that then failed: its
        # retries write only the others (a broker down for an hour would otherwise write them at every retry)
        self._dead_lettered: dict[str, set[int]] = {}
        self._opening = threading.Lock()  # worker threads open producers one at a time
        self._errors = ClientErrors()

    def problem(self) -> str | None:
        """What the check at start found wrong, until a delivery succeeds (status and /health show it at once).

        Brokers unreachable, credentials refused or a missing topic at start are not an outage
        that may pass within ``output_failing_after``: usually the configuration is wrong.
        """
        return f"output {self.name}: {self.start_error}" if self.start_error else None

    def client_settings(self) -> dict[str, Any]:
        """librdkafka settings every client of this output shares (brokers, TLS, SASL)."""
        try:
            return client_settings(self.config, f"logferry-{self.name}", self._errors)
        except OSError as exc:
            raise RetryableError(f"cannot read {exc.filename}: {exc.strerror}") from exc

    async def start(self) -> None:
        """Check the topics and open the first transactional producer; a failure is kept in ``start_error``."""
        async with self._slot_locks[0]:
            try:
                await asyncio.to_thread(self._ensure_session, 0)
            except RetryableError as exc:
                self.start_error = str(exc)
                log.error("output %s: %s", self.name, exc)
                return
        log.info("output %s: producing to topic %s as transactional.id %s (%d producers)",
                 self.name, self.config.topic, self.transactional_id, len(self._sessions))

    async def write(self, chunk: Chunk) -> None:
        """Produce the chunk in one transaction, unless a marker says it is already in Kafka.

        A chunk whose transaction failed goes back to the same producer: only that one's next
        ``init_transactions`` settles whether the failed transaction was committed.
        """
        slot = self._unsettled.get(chunk.chunk_id)
        if slot is None:
            slot = next((n for n, lock in enumerate(self._slot_locks) if not lock.locked()), 0)
        async with self._slot_locks[slot]:
            try:
                dead = await asyncio.to_thread(self._deliver, chunk, slot)
            except BaseException:
                self._unsettled[chunk.chunk_id] = slot
                raise
        self._unsettled.pop(chunk.chunk_id, None)
        if dead:
            self.rejected_records += dead
            self.context.dead_letters.count += dead
        self.start_error = None

    async def close(self) -> None:
        """Drop the producers (an open transaction is aborted by the next one with the same id)."""
        await asyncio.to_thread(self._close_all)

    def _close_all(self) -> None:
        # A cancelled write's worker thread may still be producing: its producer is closed once
        # it is done, or left to the process's exit (a producer must not be closed in use).
        for slot, in_use in enumerate(self._in_use):
            if in_use.acquire(timeout=self.config.request_timeout):
                try:
                    self._drop_session(slot)
                finally:
                    in_use.release()
            else:
                log.warning("output %s: producer %d still busy at close: left open", self.name, slot)

    # -- one delivery (worker thread) ---------------------------------------------------------

    def _deliver(self, chunk: Chunk, slot: int) -> int:
        """Produce ``chunk`` in one transaction; return how many records were dead-lettered."""
        with self._in_use[slot]:
            return self._deliver_on(chunk, slot)

    def _deliver_on(self, chunk: Chunk, slot: int) -> int:
        session = self._ensure_session(slot)
        if self._already_delivered(chunk.chunk_id):
            self._dead_lettered.pop(chunk.chunk_id, None)
            log.info("output %s: chunk %s already in Kafka (committed before a restart or a failure): skipped",
                     self.name, chunk.name)
            self.skipped_chunks += 1
            return 0
        try:
            return self._transaction(session, chunk)
        except KafkaException as exc:
            self._drop_session(slot)
            raise RetryableError(self._describe(exc.args[0], f"transaction of chunk {chunk.name}")) from exc
        except BaseException:
            self._drop_session(slot)
            raise

    def _already_delivered(self, chunk_id: str) -> bool:
        return chunk_id in self._retired or any(s is not None and chunk_id in s.delivered for s in self._sessions)

    def _transaction(self, session: Session, chunk: Chunk) -> int:
        producer, timeout = session.producer, self.config.request_timeout
        started = time.monotonic()
        producer.begin_transaction()
        dead: dict[int, bytes] = {}  # the record's index in the chunk (its offset may repeat: a file truncated) → entry
        for index, message in enumerate(self.encoder.messages(chunk)):
            if message.size(self.config.id_header) > session.max_record_bytes:
                dead[index] = self._dead_entry(message, session.max_record_bytes)
            else:
                self._produce(producer, message)
        if dead:  # before the commit: never a record skipped without its entry
            written = self._dead_lettered.setdefault(chunk.chunk_id, set())
            if fresh := [entry for key, entry in dead.items() if key not in written]:
                self._write_dead(fresh)
            written.update(dead)
        delivered = self._still_buffered(session.delivered) | {chunk.chunk_id}
        producer.produce(self.config.state_topic, marker_value(delivered, self.context.clock.time()),
                         key=session.key.encode(), partition=session.state_partition)
        produced = time.monotonic()
        producer.commit_transaction(timeout)
        session.delivered = delivered
        self._dead_lettered.pop(chunk.chunk_id, None)
        log.debug("output %s: chunk %s: %d records produced in %.3fs, committed in %.3fs", self.name, chunk.name,
                  chunk.records, produced - started, time.monotonic() - produced)
        return len(dead)

    def _produce(self, producer: Producer, message: Message) -> None:
        headers: list[tuple[str, str | bytes | None]] = [(self.config.id_header, message.record_id.encode())]
        while True:
            try:
                producer.produce(self.config.topic, message.value, key=message.key, headers=headers)
                return
            except BufferError:  # the local queue is full: let librdkafka send some
                producer.poll(0.05)

    def _still_buffered(self, chunk_ids: set[str]) -> set[str]:
        """The chunks of ``chunk_ids`` whose files are still in the buffer (delivered, not yet deleted)."""
        present = {name.split(".")[1] for name in os.listdir(self.context.state_dir) if name.count(".") == 2}
        return chunk_ids & present

    def _write_dead(self, entries: list[bytes]) -> None:
        try:
            self.context.dead_letters.write(entries)
        except OSError as exc:
            raise RetryableError(f"cannot write dead letters: {exc.strerror}") from exc
        log.warning("output %s: %d records over the topic's max.message.bytes dead-lettered", self.name, len(entries))

    def _dead_entry(self, message: Message, limit: int) -> bytes:
        entry = {
            "id": f"{message.source}:{message.file}:{message.offset}", "time": iso_millis(self.context.clock.time()),
            "source": message.source, "path": message.path, "offset": message.offset,
            "reason": f"record of about {message.size(self.config.id_header)} bytes is over what topic "
                      f"{self.config.topic} takes ({limit} bytes, from its max.message.bytes)",
            "output": self.name, "record_id": message.record_id, **line_fields(message.value),
        }  # fmt: skip
        return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)

    # -- the producer session (worker thread) -------------------------------------------------

    def _ensure_session(self, slot: int) -> Session:
        """The slot's producer; every missing one is opened with it, so none of their predecessors stays open."""
        with self._opening:
            if self._sessions[slot] is None:
                try:
                    self._open_sessions([n for n, session in enumerate(self._sessions) if session is None])
                except KafkaException as exc:
                    raise RetryableError(self._describe(exc.args[0], "start")) from exc
                except StateReadError as exc:
                    raise RetryableError(f"cannot read the state topic {self.config.state_topic}: {exc}") from exc
                except TimeoutError as exc:  # an admin request's future (a broker killed but not yet fenced)
                    raise RetryableError(f"start: the brokers {','.join(self.config.brokers)} did not answer "
                                         f"within {self.config.request_timeout:g}s") from exc
            session = self._sessions[slot]
            assert session is not None
            return session

    def _open_sessions(self, slots: list[int]) -> None:
        """Check the topics, fence the slots' predecessors (``init_transactions``), then read the markers.

        The markers are read after the fencing: by then every transaction of a predecessor is
        committed or aborted, so what the read finds is final.
        """
        timeout = self.config.request_timeout
        admin = AdminClient(self.client_settings())
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException:
            admin.poll(0)  # hands the reason behind "transport failure" to self._errors
            raise
        topic = metadata.topics.get(self.config.topic)
        if topic is None or topic.error is not None:
            raise RetryableError(f"topic {self.config.topic} does not exist on {','.join(self.config.brokers)}")
        limit = self._max_message_bytes(admin)
        partition = marker_partition(self.transactional_id, self._state_partitions(admin, metadata))
        producers: dict[int, Producer] = {}
        try:
            for slot in slots:
                producers[slot] = Producer(self._producer_settings(slot_key(self.transactional_id, slot), limit))
                producers[slot].init_transactions(timeout)
            markers = read_markers(self.client_settings(), self.config.state_topic, partition,
                                   self.transactional_id, timeout)
            self._retire(markers)
        except BaseException:
            for producer in producers.values():
                producer.poll(0)  # the reason of a failure, for self._errors
                producer.close()
            raise
        self._errors.last = None  # connected: an earlier error no longer explains anything
        for slot, producer in producers.items():
            key = slot_key(self.transactional_id, slot)
            self._sessions[slot] = Session(key, producer, markers.get(key, set()), partition, limit - RECORD_OVERHEAD)

    def _retire(self, markers: dict[str, set[str]]) -> None:
        """Fence the producers of an earlier, larger ``workers`` (aborting what they left open); keep their chunks."""
        live = {slot_key(self.transactional_id, n) for n in range(len(self._sessions))}
        for key in sorted(set(markers) - live):
            if not markers[key] <= self._retired:
                retired = Producer(self._producer_settings(key, DEFAULT_MAX_MESSAGE_BYTES))
                try:
                    retired.init_transactions(self.config.request_timeout)
                finally:
                    retired.close()
                log.info("output %s: fenced %s, a producer of an earlier, larger workers setting; its %d "
                         "committed chunks are remembered", self.name, key, len(markers[key]))
                self._retired |= markers[key]

    def _producer_settings(self, key: str, max_message_bytes: int) -> dict[str, Any]:
        timeout_ms = int(self.config.transaction_timeout * 1000)
        return {
            **self.client_settings(),
            "transactional.id": key,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.config.compression,
            "linger.ms": 5,
            # A batch (before compression) never over what the topic takes.
            "batch.size": max(1024, min(MAX_BATCH_BYTES, max_message_bytes) - RECORD_OVERHEAD),
            # A record up to what the topic takes, alone in its batch where it is larger than batch.size
            # (librdkafka refuses a record over message.max.bytes, 1,000,000 by default, before sending).
            "message.max.bytes": max(LIBRDKAFKA_MESSAGE_MAX_BYTES, max_message_bytes),
            "transaction.timeout.ms": timeout_ms,
            "message.timeout.ms": timeout_ms,
            "queue.buffering.max.kbytes": 256 * 1024,
        }  # fmt: skip

    def _max_message_bytes(self, admin: AdminClient) -> int:
        """The topic's ``max.message.bytes``."""
        resource = ConfigResource(ConfigResource.Type.TOPIC, self.config.topic)
        configs = admin.describe_configs([resource])[resource].result(self.config.request_timeout)
        entry = configs.get("max.message.bytes")
        return int(entry.value) if entry is not None and entry.value else DEFAULT_MAX_MESSAGE_BYTES

    def _state_partitions(self, admin: AdminClient, metadata: Any) -> int:
        """Partitions of the state topic, which is created (compacted, one partition) if missing."""
        state = metadata.topics.get(self.config.state_topic)
        if state is not None and state.error is None:
            return len(state.partitions)
        topic = NewTopic(self.config.state_topic, 1, replication_factor=-1, config=STATE_TOPIC_CONFIG)
        try:
            admin.create_topics([topic])[self.config.state_topic].result(self.config.request_timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another host created it meanwhile
                raise
        log.info("output %s: created the state topic %s", self.name, self.config.state_topic)
        return 1

    def _drop_session(self, slot: int) -> None:
        session, self._sessions[slot] = self._sessions[slot], None
        if session is not None:
            session.producer.close()

    def _describe(self, error: KafkaError, during: str) -> str:
        """A clear message for a client error: fenced, credentials refused, brokers unreachable, or Kafka's words."""
        brokers = ",".join(self.config.brokers)
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH):
            return (f"{during}: fenced: another producer uses the transactional.id {self.transactional_id} "
                    "(another logferry with the same host name and output?)")
        last = self._errors.last
        if error.code() == KafkaError._AUTHENTICATION or self._errors.refused_credentials():
            reason = last.str() if last is not None else error.str()
            return (f"{during}: the brokers {brokers} refused the credentials of {self.config.username} "
                    f"({self.config.sasl_mechanism}): {reason}")
        if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT):
            return f"{during}: cannot reach the brokers {brokers}: {(last or error).str()}"
        return f"{during}: {error.name()}: {error.str()}"
