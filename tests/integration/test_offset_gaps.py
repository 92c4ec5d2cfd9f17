"""Many producers writing one partition at once: a consumer reading through the gap guard passes every
acknowledged record exactly once.

The embedded broker gives a batch its offsets before it stores it, so a consumer at the tail
can be handed offset N+1 while N is still being stored (stream/kafka/gaps.py). An unguarded
consumer reads beside the guarded one; what it misses is printed, as evidence of the race,
not asserted (the race is timing-dependent).
"""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from stream.kafka.clients import base_config, make_admin, make_producer
from stream.kafka.gaps import OFFSET_GAPS, GapGuard
from tests.waiting import wait_for

PRODUCERS = 8
PER_PRODUCER = 1500
SECONDS = 6.0


def produce(settings, topic: str, name: str, acked: set[bytes], lock: threading.Lock) -> None:
    producer = Producer({**base_config(settings, "client"), "linger.ms": 2, "enable.idempotence": True})

    def delivered(err, msg) -> None:
        if err is None:
            with lock:
                acked.add(msg.value())

    started = time.monotonic()
    for i in range(PER_PRODUCER):
        producer.produce(topic, f"{name}-{i}".encode(), on_delivery=delivered)
        producer.poll(0)
        delay = started + (i + 1) * SECONDS / PER_PRODUCER - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    assert producer.flush(30) == 0


#: The record produced after every other one.
END = b"end"


class Tail(threading.Thread):
    def __init__(self, settings, topic: str, guarded: bool) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic, self.guarded = settings, topic, guarded
        self.seen: list[bytes] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        consumer = Consumer({**base_config(self.settings, "test"), "group.id": f"tail-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        start = [TopicPartition(self.topic, 0, 0)]
        guard = GapGuard(consumer, f"tail-{self.guarded}")
        guard.expect(start)
        consumer.assign(start)
        try:
            while not self.stopping.is_set():
                batch = consumer.consume(500, 0.1)
                for msg in guard.admit(batch) if self.guarded else batch:
                    if msg.error() is None:
                        self.seen.append(msg.value())
        finally:
            consumer.close()


def filled(component: str) -> float:
    return sum(s.value for m in OFFSET_GAPS.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels["component"] == component and s.labels["outcome"] == "filled")


def test_a_guarded_consumer_passes_every_record_of_concurrent_producers_once(settings):
    topic = f"{settings.topic_prefix}gaps"
    admin = make_admin(settings)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    guarded, plain = Tail(settings, topic, True), Tail(settings, topic, False)
    guarded.start()
    plain.start()
    acked: set[bytes] = set()
    lock = threading.Lock()
    producers = [threading.Thread(target=produce, args=(settings, topic, f"p{i}", acked, lock))
                 for i in range(PRODUCERS)]
    for t in producers:
        t.start()
    for t in producers:
        t.join(SECONDS + 60)
    assert len(acked) == PRODUCERS * PER_PRODUCER
    # A last record after every acknowledged one: the guard passes a partition in offset order without a
    # hole, so once it has passed this one it has passed (or stepped over) every offset before it.
    end = make_producer(settings, "test")
    end.produce(topic, END)
    assert end.flush(30) == 0
    wait_for(lambda: END in guarded.seen and END in plain.seen, 30, "both consumers to read the last record")
    guarded.stopping.set()
    plain.stopping.set()
    guarded.join(10)
    plain.join(10)
    passed = [value for value in guarded.seen if value != END]
    missing = acked - set(passed)
    assert not missing, f"{len(missing)} acknowledged records never passed the guard: {sorted(missing)[:5]}"
    assert len(passed) == len(acked) and guarded.seen[-1] == END, "a record passed the guard twice, or out of order"
    print(f"unguarded consumer missed {len(acked - set(plain.seen))} of {len(acked)}; "
          f"the guard filled {filled('tail-True'):.0f} holes")
