"""The replay buffer service: consumes ``experiences`` into the durable ``ReplayStore``.

Offsets live in the store, written in the same transaction as the experiences they
cover, and on (re)assignment each partition is sought to that position. So a crash
at any point, kill -9 included, neither loses an acknowledged experience nor stores
one twice; the offsets committed to Kafka are only advisory (for lag monitoring).
Invalid messages go to the dead-letter topic through an outbox in the store: they
are written in the batch's transaction and sent (and deleted) once it commits, so a
crash neither loses a dead letter nor re-sends it, except in the instant between
the broker's acknowledgement and the outbox delete (each carries its topic,
partition and offset, which identify a duplicate).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from stream import schemas
from stream.config import Settings
from stream.kafka.clients import make_consumer
from stream.kafka.dead_letters import decode_consumed
from stream.kafka.gaps import GapGuard
from stream.kafka.metrics import LagReporter, Tally
from stream.kafka.producer import EventProducer
from stream.kafka.topics import topic_name
from stream.ops.metrics import REPLAY_BATCH_SECONDS, REPLAY_INSERTS, REPLAY_ROWS
from stream.replay.store import ReplayStore, StoreConfig

log = logging.getLogger(__name__)


def default_store_path(settings: Settings) -> Path:
    return settings.data_dir / "replay" / f"{settings.topic_prefix or 'default'}replay.db"


class ReplayService:
    def __init__(self, settings: Settings, store_path: Path | None = None,
                 config: StoreConfig | None = None, batch: int = 2000, wait: float = 0.1) -> None:
        self.settings = settings
        self.topic = topic_name(settings, "experiences")
        self.lag = LagReporter("replay", {self.topic: "experiences"})
        self.store = ReplayStore(store_path or default_store_path(settings), config)
        self.batch = batch
        #: Longest wait for a batch to fill: a fuller batch costs one commit (an fsync) for more rows,
        #: a shorter wait stores a quiet stream's click sooner.
        self.wait = wait
        self.stop_event = threading.Event()
        self.consumed = 0
        self.tally = Tally()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        durable = self.store.offsets()
        for tp in partitions:
            tp.offset = durable.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        log.info("assigned %s", [(tp.partition, tp.offset) for tp in partitions])
        self.guard.expect(partitions)
        consumer.assign(partitions)

    def _update_gauges(self) -> None:
        sizes = self.store.sizes()
        REPLAY_ROWS.labels(tier="recent").set(sizes["recent"])
        REPLAY_ROWS.labels(tier="reservoir").set(sizes["reservoir"])

    def run(self, idle_exit: float | None = None) -> None:
        """Consume until ``stop()`` (or ``idle_exit`` seconds without messages, for finite runs).

        The topics must exist (``stream.ops.lifecycle.run_role`` ensures them at start).
        """
        group = f"{self.settings.topic_prefix}replay"
        consumer = make_consumer(self.settings, "replay", group, **{"enable.auto.commit": False})
        out = EventProducer(self.settings, "replay")
        self.guard = GapGuard(consumer, "replay")
        consumer.subscribe([self.topic], on_assign=self._on_assign)
        self._update_gauges()
        self._send_outbox(out)   # left by a crash after its batch committed
        last_message = time.monotonic()
        try:
            while not self.stop_event.is_set():
                messages = consumer.consume(self.batch, self.wait)
                self.lag.maybe_report(consumer, time.monotonic())
                if not messages:
                    if idle_exit is not None and time.monotonic() - last_message > idle_exit:
                        return
                    continue
                last_message = time.monotonic()
                messages = self.guard.admit(messages)
                if messages:
                    self._process(messages, consumer, out)
        finally:
            consumer.close()
            out.release()
            self.store.close()

    def _process(self, messages: list[Message], consumer: Consumer, out: EventProducer) -> None:
        started = time.perf_counter()
        experiences: list[schemas.Experience] = []
        payloads: list[bytes] = []
        letters: list[schemas.DeadLetter] = []
        offsets = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err.str())
                continue
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            event, letter = decode_consumed("experiences", msg.value() or b"", "replay", msg.topic(),
                                            msg.partition(), msg.offset(), msg.key(), self.tally,
                                            self.settings.user_features)
            if letter is not None:
                letters.append(letter)
            else:
                experiences.append(event)
                payloads.append(msg.value())
        added = self.store.add(experiences, offsets, letters, payloads)
        if letters:
            self._send_outbox(out)
        REPLAY_INSERTS.labels(status="added").inc(added)
        REPLAY_INSERTS.labels(status="duplicate").inc(len(experiences) - added)
        self.consumed += len(messages)
        self.tally.publish()
        self._update_gauges()
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=True)
        REPLAY_BATCH_SECONDS.observe(time.perf_counter() - started)

    def _send_outbox(self, out: EventProducer) -> None:
        pending = self.store.outbox()
        if not pending:
            return
        for _, letter in pending:
            out.dead_letters.publish(letter)
        out.flush(30)   # raises DeliveryError: the outbox keeps what the broker did not acknowledge
        self.store.clear_outbox(row_id for row_id, _ in pending)

    def stop(self) -> None:
        self.stop_event.set()
