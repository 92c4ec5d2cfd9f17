"""Consumers that do not step over records: a hole in a partition's offsets is read again before it is passed.

The embedded broker (Tansu 0.6.0, memory storage) hands a produce request its offsets
before it stores the batch, and a fetch returns whatever batches are stored at or after
the fetch offset. Two producers writing one partition at once can therefore leave a
consumer at offset N the batch at N+1 while batch N is still being stored: the
consumer moves on, and N is never read (eight producers, 12,000 records in 6 s: an
unguarded consumer at the tail missed one in each of two runs of
``tests/integration/test_offset_gaps.py``).

A real Kafka never lets the high watermark pass a batch it has not stored, and an
uncompacted topic without transactions has no holes. So a hole is taken as "not yet
readable": the partition is rewound to it and read again until the hole fills. One still
there after ``PATIENCE`` seconds is real (records deleted by retention before the
consumer got to them): it is stepped over, logged and counted. Compacted topics have
holes by design and are not guarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter

log = logging.getLogger(__name__)

OFFSET_GAPS = Counter(
    "recsys_kafka_offset_gaps_total",
    "Holes in a partition's offsets met by a consumer: filled (read again and found) or stepped_over "
    "(still missing after the patience).", ["component", "topic", "outcome"])

#: Seconds a hole may take to fill before it is taken as real and stepped over.
PATIENCE = 2.0

Key = tuple[str, int]


class GapGuard:
    """Passes each partition's records in offset order without a hole; ``admit`` every consumed batch.

    ``expect`` says where a partition starts (an assignment's offset, a deliberate rewind);
    without it, the first record read is taken as the start.
    """

    def __init__(self, consumer: Consumer, component: str, *, patience: float = PATIENCE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.component = component
        self.patience = patience
        self.clock = clock
        self.next: dict[Key, int] = {}
        self.gap_since: dict[Key, float] = {}

    def expect(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions now read from these offsets; a logical offset (beginning, end, stored) means unknown."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.gap_since.pop(key, None)
            if tp.offset >= 0:
                self.next[key] = tp.offset
            else:
                self.next.pop(key, None)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions no longer read (revoked, lost)."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self.gap_since.pop(key, None)
            self.next.pop(key, None)

    def admit(self, messages: Iterable[Message]) -> list[Message]:
        """The records that continue their partitions without a hole, plus every error event.

        A record past a hole rewinds its partition to the hole, and the rest of that
        partition in this batch is dropped: it is read again. A step back (an offset reset,
        a caller's own seek) is followed.
        """
        out: list[Message] = []
        rewound: set[Key] = set()
        for msg in messages:
            if msg.error() is not None:
                out.append(msg)
                continue
            key = (msg.topic(), msg.partition())
            if key in rewound:
                continue
            offset, expected = msg.offset(), self.next.get(key)
            if expected is not None and offset > expected and self._waiting(key, expected, offset):
                rewound.add(key)
                continue
            if key in self.gap_since:
                self._settle(key, "filled")
            self.next[key] = offset + 1
            out.append(msg)
        return out

    def _waiting(self, key: Key, expected: int, offset: int) -> bool:
        """Whether to read the hole ``expected``..``offset - 1`` again (it is rewound to) rather than step over it."""
        now = self.clock()
        since = self.gap_since.setdefault(key, now)
        if now - since >= self.patience:
            log.warning("%s: offsets %d-%d of %s[%d] still missing after %.1fs: stepping over them", self.component,
                        expected, offset - 1, key[0], key[1], now - since)
            self._settle(key, "stepped_over")
            return False
        try:
            self.consumer.seek(TopicPartition(key[0], key[1], expected))
        except KafkaException as exc:   # not ours any more, or the broker is away: pass what was read
            log.warning("%s: cannot read offsets %d-%d of %s[%d] again (%s): stepping over them", self.component,
                        expected, offset - 1, key[0], key[1], exc)
            self._settle(key, "stepped_over")
            return False
        return True

    def _settle(self, key: Key, outcome: str) -> None:
        OFFSET_GAPS.labels(self.component, key[0], outcome).inc()
        self.gap_since.pop(key, None)
