"""The one producer wrapper every role writes through (events, changelog records, policy chunks, dead letters).

``EventProducer`` keys each event by its contract's key (user_id for behaviour events,
so a user's events share a partition), produces with an idempotent acks=all producer,
and dead-letters what it refuses. Delivery failures are counted and raised by
``flush`` instead of vanishing in a callback; successes are counted in bulk once
nothing is outstanding (librdkafka reports only failures: ``delivery.report.only.error``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from confluent_kafka import KafkaError, Message, Producer

from stream import schemas
from stream.config import Settings
from stream.kafka.clients import make_producer
from stream.kafka.dead_letters import DeadLetters
from stream.kafka.metrics import EVENTS_PRODUCED, PRODUCE_ERRORS
from stream.kafka.topics import logical_name, topic_name

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """Some messages were not acknowledged by the broker; ``failures`` lists the first of them."""

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class EventProducer:
    """The one producer of every role: idempotent, acks=all, validating at the edge, dead-lettering what it refuses.

    One error policy for all: delivery reports are counted per topic (never one
    callback's bookkeeping per caller), a full local queue waits for deliveries
    instead of failing, and ``flush`` raises ``DeliveryError`` if anything since the
    last flush was not acknowledged, then starts clean.
    """

    def __init__(self, settings: Settings, component: str = "ingest", **overrides: Any):
        """``overrides``: librdkafka settings for this producer (``linger.ms``, say) over the defaults."""
        self._setup(settings, component, None, overrides)

    @classmethod
    def sharing(cls, settings: Settings, component: str, producer: Producer) -> EventProducer:
        """One that sends through a producer someone else owns (delivery reports then come per message)."""
        out = cls.__new__(cls)
        out._setup(settings, component, producer, {})
        return out

    def _setup(self, settings: Settings, component: str, producer: Producer | None, overrides: dict[str, Any]) -> None:
        self.settings = settings
        self.component = component
        # A producer of our own reports failures through one callback set in its config; a shared one gets it
        # per message (its owner may have set another).
        self._per_message: dict[str, Any] = {} if producer is None else {"on_delivery": self._delivered}
        self._producer = producer or make_producer(settings, component, on_delivery=self._delivered, **overrides)
        self.dead_letters = DeadLetters(settings, component, self._producer, self._delivered, self._count_sent)
        #: Messages acknowledged by the broker, counted when a flush (or a poll) finds none outstanding.
        self.delivered = 0
        self.failures: list[str] = []
        self._names: dict[str, str] = {}
        self._sent: dict[str, int] = {}     # per topic, produced since everything was last settled
        self._failed: dict[str, int] = {}   # per topic, failures reported since then
        self._unpolled = 0

    def _topic(self, logical: str) -> str:
        name = self._names.get(logical)
        if name is None:
            name = self._names[logical] = topic_name(self.settings, logical)
        return name

    def _logical(self, topic: str) -> str:
        """The label for a topic: its logical name (a prefix per tenant must not multiply the series)."""
        return logical_name(self.settings, topic)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return   # a client built without delivery.report.only.error: successes are settled in bulk
        topic = msg.topic()
        self._failed[topic] = self._failed.get(topic, 0) + 1
        PRODUCE_ERRORS.labels(topic=self._logical(topic), component=self.component).inc()
        if len(self.failures) < 100:
            self.failures.append(f"{topic}: {err.str()}")
        log.error("delivery to %s failed: %s", topic, err.str())

    def _count_sent(self, topic: str) -> None:
        self._sent[topic] = self._sent.get(topic, 0) + 1

    def _settle(self) -> None:
        """Nothing is outstanding: every message sent since the last settlement was acknowledged,
        except those a failure report named."""
        for topic, sent in self._sent.items():
            acknowledged = sent - self._failed.get(topic, 0)
            if acknowledged > 0:
                self.delivered += acknowledged
                EVENTS_PRODUCED.labels(topic=self._logical(topic), component=self.component).inc(acknowledged)
        self._sent, self._failed = {}, {}

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        self._produce_all(topic, ((key, value),), partition)

    def _produce_all(self, topic: str, records: Iterable[tuple[bytes | None, bytes | None]],
                     partition: int | None = None) -> None:
        """Produce (key, value) pairs in one loop, not a call per message (the join's hot path); a full
        local queue waits for deliveries instead of failing."""
        extra = self._per_message if partition is None else {**self._per_message, "partition": partition}
        produce, sent = self._producer.produce, 0
        for key, value in records:
            while True:
                try:
                    produce(topic, key=key, value=value, **extra)
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self._producer.poll(0.1)
            sent += 1
        self._sent[topic] = self._sent.get(topic, 0) + sent
        self._unpolled += sent
        if self._unpolled >= 500:   # serve failure reports now and then, not per message
            self._unpolled = 0
            self._producer.poll(0)
            if not len(self._producer):
                self._settle()

    def send(self, logical: str, event: msgspec.Struct) -> None:
        """Produce an event built in code (already typed); keyed by its contract's key."""
        self._produce(self._topic(logical), schemas.key_of(logical, event), schemas.encode(event))

    def send_many(self, logical: str, events: Sequence[msgspec.Struct]) -> None:
        """``send`` for a batch: the topic, key field and encoder are looked up once, not per event."""
        if not events:
            return
        field, encode = schemas.CONTRACTS[logical].key_field, schemas.encode

        def records():
            for event in events:
                key = getattr(event, field) if field is not None else None
                yield (key.encode() if isinstance(key, str) else None), encode(event)
        self._produce_all(self._topic(logical), records())

    def send_records(self, logical: str, records: list[tuple[bytes, bytes | None]], partition: int) -> int:
        """``send_record`` for a batch on one partition (the join's changelog at each checkpoint)."""
        self._produce_all(self._topic(logical), records, partition)
        return len(records)

    def send_record(self, logical: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        """Produce an internal record (a changelog entry, a policy chunk; None is a tombstone), bytes as given."""
        self._produce(self._topic(logical), key, value, partition)

    def send_raw(self, logical: str, raw: bytes, *, line: int | None = None) -> str | None:
        """Validate raw JSON (an impression's context against ``RECSYS_USER_FEATURES`` too); produce it if
        valid, else dead-letter it.

        Returns the reason it was refused, or None when it was produced.
        """
        try:
            event = schemas.decode_for_policy(logical, raw, self.settings.user_features)
        except schemas.InvalidMessage as exc:
            self.dead_letters.send(self._topic(logical), raw, exc.reason, exc.detail, line=line)
            return exc.reason
        # Forward the caller's bytes unchanged: unknown fields survive for newer consumers.
        self._produce(self._topic(logical), schemas.key_of(logical, event), bytes(raw))
        return None

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every acknowledgement; raise DeliveryError if any message was not delivered."""
        remaining = self._producer.flush(timeout)
        if not remaining:
            self._settle()
        failures, self.failures = self.failures, []
        if remaining:
            raise DeliveryError(f"{remaining} messages still unacknowledged after {timeout:.0f}s", failures)
        if failures:
            raise DeliveryError(f"{len(failures)} deliveries failed, first: {failures[0]}", failures)

    def release(self) -> None:
        """Close the client's connections and threads without waiting for deliveries."""
        self._producer.close()

    def close(self, timeout: float = 30.0) -> None:
        """Flush (raising on undelivered messages), then release the client."""
        try:
            self.flush(timeout)
        finally:
            self.release()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
