"""A chunk's transaction retried after a failure writes the dead letters of its oversized records once.

``KafkaOutput._transaction`` with a stand-in producer (a unit test of one function): against the real broker,
the tests in tests/integration/test_kafka.py cover dead letters and transactions end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline.clock import FakeClock
from pipeline.deadletter import DeadLetterStore
from pipeline.outputs.base import OutputContext
from pipeline.outputs.kafka.output import KafkaOutput, Session
from tests.unit.test_es_encoder import make_chunk
from tests.unit.test_kafka_encoder import config

SMALL = b'{"request_id":"small","timestamp":1795000000}'
LARGE = b'{"request_id":"large","timestamp":1795000000,"input":"' + b"x" * 5000 + b'"}'


class StandInProducer:
    """Takes messages; ``commit_transaction`` fails (a retriable error, as a broker outage gives) ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.committed: list[list[bytes]] = []
        self.open: list[bytes] = []

    def begin_transaction(self) -> None:
        self.open = []

    def produce(self, topic: str, value: bytes, **_: Any) -> None:
        self.open.append(value)

    def commit_transaction(self, timeout: float) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "the brokers went away", retriable=True))
        self.committed.append(self.open)


def dead_letter_ids(root: Path) -> list[str]:
    import orjson

    return [orjson.loads(line)["record_id"] for path in sorted(root.glob("records-*.jsonl"))
            for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("failures", [1, 3])
def test_a_retried_transaction_writes_the_dead_letters_of_its_chunk_once(tmp_path: Path, failures: int) -> None:
    store = DeadLetterStore(tmp_path / "dead-letter")
    store.prepare()
    output = KafkaOutput(config(), OutputContext("events", tmp_path / "state", store, FakeClock(0.0), "host"))
    (tmp_path / "state").mkdir()
    producer = StandInProducer(failures)
    session = Session("logferry-host-events", cast(Producer, producer), set(), 0, max_record_bytes=1000)
    chunk = make_chunk(tmp_path / "chunk", ([SMALL, LARGE, SMALL], [0, 50, 5100]))
    for _ in range(failures):
        with pytest.raises(KafkaException):
            output._transaction(session, chunk)
    assert output._transaction(session, chunk) == 1, "the chunk's dead-lettered record, counted on delivery"
    assert dead_letter_ids(tmp_path / "dead-letter") == ["large"], "one entry, whatever the attempts"
    assert producer.committed == [[SMALL, SMALL, producer.committed[0][-1]]], "the records, then the marker"
    assert output._dead_lettered == {}, "nothing kept once the chunk is delivered"


def test_two_oversized_records_at_the_same_offset_of_one_chunk_each_get_their_entry(tmp_path: Path) -> None:
    # A file truncated in place (copytruncate) keeps its key and starts its offsets again: one chunk may hold two
    # records of one (source, file, offset).
    store = DeadLetterStore(tmp_path / "dead-letter")
    store.prepare()
    output = KafkaOutput(config(), OutputContext("events", tmp_path / "state", store, FakeClock(0.0), "host"))
    (tmp_path / "state").mkdir()
    producer = StandInProducer(failures=1)
    session = Session("logferry-host-events", cast(Producer, producer), set(), 0, max_record_bytes=1000)
    again = LARGE.replace(b'"large"', b'"large-again"')
    chunk = make_chunk(tmp_path / "chunk", ([LARGE], [0]), ([again], [0]))
    with pytest.raises(KafkaException):
        output._transaction(session, chunk)
    assert output._transaction(session, chunk) == 2
    assert dead_letter_ids(tmp_path / "dead-letter") == ["large", "large-again"]
