"""Following a topic in a background thread: the inputs a process keeps up with beside its main work."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from stream.config import Settings
from stream.kafka.clients import consumer_config
from stream.kafka.dead_letters import decode_consumed
from stream.kafka.gaps import GapGuard
from stream.kafka.topics import COMPACTED, topic_name

log = logging.getLogger(__name__)


class TopicFollower(threading.Thread):
    """Reads every partition of one topic in a background thread and hands valid records to ``handle``.

    No consumer group: each process follows the whole topic (a catalogue, a user's recent
    experiences), from the beginning or from the end. ``caught_up`` is set once every
    partition has been read to the end it had when the follower started reading it.
    """

    def __init__(self, settings: Settings, logical: str, handle: Callable[[list], None], from_start: bool,
                 component: str) -> None:
        super().__init__(name=f"{component}-{logical}", daemon=True)
        self.settings, self.logical, self.handle, self.from_start = settings, logical, handle, from_start
        self.component = component
        self.caught_up = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        topic = topic_name(self.settings, self.logical)
        consumer = Consumer(consumer_config(self.settings, self.component,
                                            f"{self.component}-{self.logical}-{uuid.uuid4().hex}", **{
            "enable.auto.commit": False, "enable.partition.eof": True,
            "auto.offset.reset": "earliest" if self.from_start else "latest"}))
        try:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            start = OFFSET_BEGINNING if self.from_start else OFFSET_END
            consumer.assign([TopicPartition(topic, p, start) for p in meta.partitions])
            pending_eof = set(meta.partitions)
            # A compacted topic has gaps by design; the others are read without a hole (stream/kafka/gaps.py).
            guard = None if self.logical in COMPACTED else GapGuard(consumer, self.component)
            while not self.stopping.is_set():
                batch = consumer.consume(500, 0.2)
                if guard is not None:
                    batch = guard.admit(batch)
                good = []
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending_eof.discard(msg.partition())
                        continue
                    event, letter = decode_consumed(self.logical, msg.value(), self.component, msg.topic(),
                                                    msg.partition(), msg.offset(), msg.key())
                    if letter is None:
                        good.append(event)
                    else:   # another role owns dead-lettering this topic; here it is only skipped, counted
                        log.debug("skipping invalid %s at %s[%d]@%d", self.logical, msg.topic(), msg.partition(),
                                  msg.offset())
                if good:
                    self.handle(good)
                if not pending_eof:
                    self.caught_up.set()
        except Exception:  # noqa: BLE001 - keep serving; the log says what stopped
            log.exception("%s follower of %s stopped", self.component, self.logical)
            self.caught_up.set()
        finally:
            consumer.close()
