"""A consumer's records pass in offset order without a hole: a hole is read again, then stepped over only
after the patience (pure logic; the broker's race itself is in tests/integration/test_offset_gaps.py)."""

from __future__ import annotations

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from stream.kafka.gaps import GapGuard

TOPIC = "t.experiences"


class Record:
    def __init__(self, partition: int, offset: int, error: KafkaError | None = None) -> None:
        self._partition, self._offset, self._error = partition, offset, error

    def error(self):
        return self._error

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class Seeks:
    """Stands in for the consumer: records where it was asked to read from."""

    def __init__(self, fail: bool = False) -> None:
        self.seeks: list[tuple[int, int]] = []
        self.fail = fail

    def seek(self, tp: TopicPartition) -> None:
        if self.fail:
            raise KafkaException(KafkaError(KafkaError._STATE, "partition not assigned"))
        self.seeks.append((tp.partition, tp.offset))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def offsets(messages) -> list[tuple[int, int]]:
    return [(m.partition(), m.offset()) for m in messages]


def guard_at(consumer, start: dict[int, int], clock=None) -> GapGuard:
    guard = GapGuard(consumer, "test", patience=2.0, clock=clock or Clock())
    guard.expect([TopicPartition(TOPIC, p, o) for p, o in start.items()])
    return guard


def test_records_in_order_pass_and_a_step_back_the_guard_did_not_make_is_followed():
    consumer = Seeks()
    guard = guard_at(consumer, {0: 5})
    assert offsets(guard.admit([Record(0, 5), Record(0, 6)])) == [(0, 5), (0, 6)]
    # An offset reset (a checkpoint beyond a recreated topic) or a caller's seek: read on from there.
    assert offsets(guard.admit([Record(0, 0), Record(0, 1)])) == [(0, 0), (0, 1)]
    assert consumer.seeks == []


def test_a_hole_rewinds_its_partition_only_and_is_filled_by_the_next_read():
    consumer = Seeks()
    guard = guard_at(consumer, {0: 10, 1: 0})
    got = guard.admit([Record(0, 10), Record(0, 12), Record(1, 0), Record(0, 13), Record(1, 1)])
    assert offsets(got) == [(0, 10), (1, 0), (1, 1)]       # 12 and 13 wait for 11
    assert consumer.seeks == [(0, 11)]
    # The re-read brings 11 (now stored) and 12, 13 again: each passes once, in order.
    assert offsets(guard.admit([Record(0, 11), Record(0, 12), Record(0, 13)])) == [(0, 11), (0, 12), (0, 13)]
    assert guard.gap_since == {}


def test_a_hole_that_stays_is_read_again_until_the_patience_then_stepped_over():
    consumer, clock = Seeks(), Clock()
    guard = guard_at(consumer, {0: 1000}, clock)
    for _ in range(3):
        assert guard.admit([Record(0, 1003)]) == []
        clock.now += 0.5
    assert consumer.seeks == [(0, 1000)] * 3
    clock.now = 2.5
    assert offsets(guard.admit([Record(0, 1003), Record(0, 1004)])) == [(0, 1003), (0, 1004)]
    assert guard.next[(TOPIC, 0)] == 1005 and guard.gap_since == {}


def test_a_start_at_a_logical_offset_takes_the_first_record_as_the_start():
    consumer = Seeks()
    guard = GapGuard(consumer, "test")
    guard.expect([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    assert offsets(guard.admit([Record(0, 77), Record(0, 78)])) == [(0, 77), (0, 78)]
    guard.forget([TopicPartition(TOPIC, 0)])
    assert offsets(guard.admit([Record(0, 5)])) == [(0, 5)]     # forgotten: a new start, not a repeat
    assert consumer.seeks == []


def test_errors_pass_and_a_partition_that_cannot_be_rewound_passes_what_was_read():
    eof = Record(0, 9, KafkaError(KafkaError._PARTITION_EOF))
    guard = guard_at(Seeks(fail=True), {0: 5})
    got = guard.admit([eof, Record(0, 7)])
    assert got[0] is eof and offsets(got[1:]) == [(0, 7)]
