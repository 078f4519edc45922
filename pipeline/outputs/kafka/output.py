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

Any error during a delivery drops the producer: the next attempt starts over with a new
one (``init_transactions``, marker read), which settles whether the failed transaction
was committed. A record over the topic's ``max.message.bytes`` goes to the dead-letter
store instead of failing its chunk's transaction forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.outputs.kafka.encoder import RECORD_OVERHEAD, Message, MessageEncoder
from pipeline.outputs.kafka.state import STATE_TOPIC_CONFIG, marker_partition, marker_value, read_delivered
from pipeline.transforms.enrich import iso_millis

log = logging.getLogger("logferry.output.kafka")
_client_log = logging.getLogger("logferry.output.kafka.librdkafka")
DEFAULT_MAX_MESSAGE_BYTES = 1048588  # the broker's default for topics without their own
MAX_BATCH_BYTES = 1_000_000


@dataclass
class Session:
    """A producer that has fenced its predecessors, and what the state topic says it delivered."""

    producer: Producer
    delivered: set[str]  # chunk ids of the last committed marker
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
        self._session: Session | None = None
        self._one_at_a_time = asyncio.Lock()  # one open transaction per transactional.id

    def client_settings(self) -> dict[str, Any]:
        """librdkafka settings every client of this output shares."""
        return {"bootstrap.servers": ",".join(self.config.brokers), "client.id": f"logferry-{self.name}",
                "logger": _client_log}

    async def start(self) -> None:
        """Check the topics and open the transactional producer; a failure is kept in ``start_error``."""
        async with self._one_at_a_time:
            try:
                await asyncio.to_thread(self._ensure_session)
            except RetryableError as exc:
                self.start_error = str(exc)
                log.error("output %s: %s", self.name, exc)
            else:
                log.info("output %s: producing to topic %s as transactional.id %s, %d chunks already committed",
                         self.name, self.config.topic, self.transactional_id, len(self._session.delivered)
                         if self._session else 0)

    async def write(self, chunk: Chunk) -> None:
        """Produce the chunk in one transaction, unless its marker says it is already in Kafka."""
        async with self._one_at_a_time:
            dead = await asyncio.to_thread(self._deliver, chunk)
        if dead:
            self.rejected_records += dead
            self.context.dead_letters.count += dead
        self.start_error = None

    async def close(self) -> None:
        """Drop the producer (an open transaction is aborted by the next one with the same id)."""
        session, self._session = self._session, None
        if session is not None:
            await asyncio.to_thread(session.producer.close)

    # -- one delivery (worker thread) ---------------------------------------------------------

    def _deliver(self, chunk: Chunk) -> int:
        """Produce ``chunk`` in one transaction; return how many records were dead-lettered."""
        session = self._ensure_session()
        if chunk.chunk_id in session.delivered:
            log.info("output %s: chunk %s already in Kafka (committed before a restart): skipped",
                     self.name, chunk.name)
            self.skipped_chunks += 1
            return 0
        try:
            return self._transaction(session, chunk)
        except KafkaException as exc:
            self._drop_session()
            raise RetryableError(self._describe(exc.args[0], f"transaction of chunk {chunk.name}")) from exc
        except BaseException:
            self._drop_session()
            raise

    def _transaction(self, session: Session, chunk: Chunk) -> int:
        producer, timeout = session.producer, self.config.request_timeout
        started = time.monotonic()
        producer.begin_transaction()
        dead: list[bytes] = []
        for message in self.encoder.messages(chunk):
            if message.size(self.config.id_header) > session.max_record_bytes:
                dead.append(self._dead_entry(message, session.max_record_bytes))
            else:
                self._produce(producer, message)
        if dead:  # before the commit: never a record skipped without its entry
            self._write_dead(dead)
        delivered = self._still_buffered(session.delivered) | {chunk.chunk_id}
        producer.produce(self.config.state_topic, marker_value(delivered, self.context.clock.time()),
                         key=self.transactional_id.encode(), partition=session.state_partition)
        produced = time.monotonic()
        producer.commit_transaction(timeout)
        session.delivered = delivered
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

    def _ensure_session(self) -> Session:
        if self._session is None:
            try:
                self._session = self._open_session()
            except KafkaException as exc:
                raise RetryableError(self._describe(exc.args[0], "start")) from exc
        return self._session

    def _open_session(self) -> Session:
        """Check the topics, fence predecessors, read the last marker."""
        timeout = self.config.request_timeout
        admin = AdminClient(self.client_settings())
        metadata = admin.list_topics(timeout=timeout)
        topic = metadata.topics.get(self.config.topic)
        if topic is None or topic.error is not None:
            raise RetryableError(f"topic {self.config.topic} does not exist on {','.join(self.config.brokers)}")
        limit = self._max_message_bytes(admin)
        partitions = self._state_partitions(admin, metadata)
        producer = Producer(self._producer_settings(limit))
        try:
            producer.init_transactions(timeout)
            partition = marker_partition(self.transactional_id, partitions)
            delivered = read_delivered(self.client_settings(), self.config.state_topic, partition,
                                       self.transactional_id, timeout)
        except BaseException:
            producer.close()
            raise
        return Session(producer, delivered, partition, min(limit, MAX_BATCH_BYTES) - RECORD_OVERHEAD)

    def _producer_settings(self, max_message_bytes: int) -> dict[str, Any]:
        timeout_ms = int(self.config.transaction_timeout * 1000)
        return {
            **self.client_settings(),
            "transactional.id": self.transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.config.compression,
            "linger.ms": 5,
            # A batch (before compression) never over what the topic takes.
            "batch.size": max(1024, min(MAX_BATCH_BYTES, max_message_bytes) - RECORD_OVERHEAD),
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

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.producer.close()

    def _describe(self, error: KafkaError, during: str) -> str:
        """A clear message for a client error."""
        brokers = ",".join(self.config.brokers)
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH):
            return (f"{during}: fenced: another producer uses transactional.id {self.transactional_id} "
                    "(another logferry with the same host name and output?)")
        if error.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT):
            return f"{during}: cannot reach the brokers {brokers}: {error.str()}"
        return f"{during}: {error.name()}: {error.str()}"
