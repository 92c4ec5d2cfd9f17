"""Consumers that do not step over records: a gap in a partition's offsets is read again before it is passed.

The embedded broker (Tansu 0.6.0, memory storage) hands a produce request its offsets
before it stores the batch, and a fetch returns whatever batches are stored at or after
the fetch offset. Two producers writing one partition at once can therefore leave a
consumer at offset N the batch at N+1 while batch N is still being stored: the
consumer moves on, and N is never read (eight producers, 12,000 records in 6 s: an
unguarded consumer at the tail missed one in each of two runs of
``tests/integration/test_offset_gaps.py``). The same broker returns
nothing from a batch that *contains* the fetch offset (fixed upstream after 0.6.0), so a
consumer resuming from a commit inside a batch loses the batch's rest.

A real Kafka does neither, and an uncompacted topic without transactions has no gaps.
So a gap is taken as "not yet readable": the partition is rewound to the first offset
not yet passed, a few times at that offset and then from ``LOOKBACK`` earlier (to get the
whole batch that holds it), dropping the records passed already. A gap that is
still there after ``PATIENCE`` seconds is real (records deleted by retention before the
consumer got to them): it is stepped over, logged and counted. Compacted topics have gaps
by design and are not guarded.
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
    "Gaps in a partition's offsets seen by a consumer: filled (read again and found) or stepped_over "
    "(still missing after the patience).", ["component", "topic", "outcome"])

#: Seconds a gap may take to fill before it is taken as real and stepped over.
PATIENCE = 2.0
#: Rewinds at the gap's first offset before reading from ``LOOKBACK`` records earlier instead.
PLAIN_REWINDS = 2
#: How far before the gap a rewind reads once rewinding at the gap did not fill it.
LOOKBACK = 1000

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
        self.rewinds: dict[Key, int] = {}

    def expect(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions now read from these offsets; a logical offset (beginning, end, stored) means unknown."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._settle(key)
            if tp.offset >= 0:
                self.next[key] = tp.offset
            else:
                self.next.pop(key, None)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions no longer read (revoked, lost)."""
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._settle(key)
            self.next.pop(key, None)

    def admit(self, messages: Iterable[Message]) -> list[Message]:
        """The records that continue their partitions without a hole, plus every error event.

        A record past a hole rewinds its partition (the rest of that partition in this batch
        is dropped: it is read again); records before the hole that a rewind from before it
        brings again were passed already and are dropped. Any other step back (an offset reset,
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
            if expected is not None and offset < expected:
                if self.rewinds.get(key, 0) > PLAIN_REWINDS:
                    continue        # read again from before the hole: passed already
                # The consumer moved back by itself (an offset reset, a caller's seek): read on from there.
                log.info("%s: %s[%d] went back from %d to %d", self.component, key[0], key[1], expected, offset)
                self._settle(key)
            if expected is not None and offset > expected and not self._stepping_over(key, expected, offset):
                if self._rewind(key, expected, offset):
                    rewound.add(key)
                    continue
            if key in self.gap_since:
                self._settle(key, "filled")
            self.next[key] = offset + 1
            out.append(msg)
        return out

    def _stepping_over(self, key: Key, expected: int, offset: int) -> bool:
        now = self.clock()
        since = self.gap_since.setdefault(key, now)
        if now - since < self.patience:
            return False
        log.warning("%s: offsets %d-%d of %s[%d] still missing after %.1fs: stepping over them", self.component,
                    expected, offset - 1, key[0], key[1], now - since)
        self._settle(key, "stepped_over")
        return True

    def _rewind(self, key: Key, expected: int, offset: int) -> bool:
        """Read the partition again from the hole (or from before it); False when the consumer cannot."""
        attempt = self.rewinds.get(key, 0) + 1
        self.rewinds[key] = attempt
        target = expected
        try:
            if attempt > PLAIN_REWINDS:
                low, _high = self.consumer.get_watermark_offsets(TopicPartition(*key), timeout=5, cached=False)
                target = max(low, expected - LOOKBACK)
            self.consumer.seek(TopicPartition(key[0], key[1], target))
        except KafkaException as exc:   # not ours any more, or the broker is away: pass what was read
            log.warning("%s: cannot rewind %s[%d] to %d (%s): stepping over offsets %d-%d", self.component,
                        key[0], key[1], target, exc, expected, offset - 1)
            self._settle(key, "stepped_over")
            return False
        log.debug("%s: %s[%d] has a hole at %d: rewound to %d (attempt %d)", self.component, key[0], key[1],
                  expected, target, attempt)
        return True

    def _settle(self, key: Key, outcome: str | None = None) -> None:
        if outcome is not None:
            OFFSET_GAPS.labels(self.component, key[0], outcome).inc()
        self.gap_since.pop(key, None)
        self.rewinds.pop(key, None)
