"""The dead-letter topic: where refused input goes, with its reason and origin.

Nothing is dropped silently: every message a role cannot use is copied here with
the reason, the error text, its source topic/partition/offset (or file line) and
its original bytes, and ``recsys_dead_letters_total`` goes up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message, Producer

from stream import schemas
from stream.config import Settings
from stream.kafka.metrics import DEAD_LETTERS, EVENTS_CONSUMED, Tally
from stream.kafka.topics import logical_name, topic_name

log = logging.getLogger(__name__)


def envelope(
    source_topic: str,
    raw: bytes,
    reason: str,
    error: str,
    component: str,
    *,
    key: bytes | None = None,
    partition: int | None = None,
    offset: int | None = None,
    line: int | None = None,
) -> schemas.DeadLetter:
    """A dead letter; huge originals keep their first bytes and their true size."""
    limit = schemas.MAX_DEAD_LETTER_ORIGINAL_BYTES
    return schemas.DeadLetter(
        source_topic=source_topic,
        reason=reason,
        error=error[:2000],
        component=component,
        ts=time.time(),
        original=bytes(raw[:limit]),
        original_size=len(raw),
        original_truncated=len(raw) > limit,
        key=key[:1024] if key is not None else None,
        partition=partition,
        offset=offset,
        line=line,
    )


class DeadLetters:
    """Sends dead letters through a caller's producer, so they share its delivery tracking."""

    def __init__(
        self,
        settings: Settings,
        component: str,
        producer: Producer,
        on_delivery: Callable[[Any, Message], None] | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> None:
        self.topic = topic_name(settings, "dlq")
        self.settings = settings
        self.component = component
        self._producer = producer
        self._on_delivery = on_delivery
        self._on_sent = on_sent   # the owner's count of what awaits acknowledgement
        self.sent = 0

    def send(
        self,
        source_topic: str,
        raw: bytes,
        reason: str,
        error: str,
        **coordinates: Any,
    ) -> schemas.DeadLetter:
        return self.publish(envelope(source_topic, raw, reason, error, self.component, **coordinates))

    def publish(self, letter: schemas.DeadLetter) -> schemas.DeadLetter:
        """Produce a dead letter already built (e.g. by the reward join) and count it."""
        payload = schemas.encode(letter)
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery} if self._on_delivery else {}
        while True:
            try:
                self._producer.produce(self.topic, key=letter.source_topic.encode(), value=payload, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.1)
        self.sent += 1
        if self._on_sent is not None:
            self._on_sent(self.topic)
        # The label is the logical topic: a prefix per tenant must not multiply the series.
        DEAD_LETTERS.labels(topic=logical_name(self.settings, letter.source_topic), component=letter.component,
                            reason=letter.reason).inc()
        log.debug("dead-lettered message from %s: %s", letter.source_topic, letter.error)
        return letter

    def decode_or_dead_letter(self, logical: str, msg: Message) -> Any | None:
        """Decode a consumed message; an invalid one goes to the dead-letter topic (returns None)."""
        event, letter = decode_consumed(logical, msg.value() or b"", self.component, msg.topic(),
                                        msg.partition(), msg.offset(), msg.key())
        if letter is not None:
            self.publish(letter)
        return event


def decode_consumed(
    logical: str, raw: bytes, component: str, topic: str, partition: int, offset: int, key: bytes | None,
    tally: Tally | None = None, user_features: int | None = None,
) -> tuple[Any | None, schemas.DeadLetter | None]:
    """(event, None) for a valid consumed message, (None, dead letter with its origin) otherwise.

    One place where consumers validate and count what they read, whether they send
    the dead letter at once or hand it back to a caller that batches its output
    (which passes a ``tally`` and publishes the counts once per batch). With
    ``user_features``, a context of another width is refused too (``schemas.decode_for_policy``).
    """
    try:
        event = schemas.decode_for_policy(logical, raw, user_features)
    except schemas.InvalidMessage as exc:
        EVENTS_CONSUMED.labels(topic=logical, component=component, status="invalid").inc()
        return None, envelope(topic, raw, exc.reason, exc.detail, component,
                              key=key, partition=partition, offset=offset)
    counter = _consumed_ok.get((logical, component))
    if counter is None:
        counter = _consumed_ok[(logical, component)] = EVENTS_CONSUMED.labels(
            topic=logical, component=component, status="ok")
    if tally is None:
        counter.inc()
    else:
        tally.add(counter)
    return event, None


#: Label children of the per-message "ok" counter (``labels()`` per message costs more than the decode).
_consumed_ok: dict[tuple[str, str], Any] = {}
