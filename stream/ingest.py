"""How events enter the system: a validating producer API and JSONL file ingestion.

``EventProducer`` validates at the edge, keys each event by its contract's key
(user_id for behaviour events, so a user's events share a partition), produces
with an idempotent acks=all producer, and dead-letters what it refuses. Delivery
failures are counted and raised by ``flush`` instead of vanishing in a callback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import msgspec
from confluent_kafka import KafkaError, Message, Producer

from stream import schemas
from stream.clients import make_producer
from stream.config import Settings
from stream.dead_letters import DeadLetters
from stream.metrics import EVENTS_PRODUCED, INGEST_LINES, PRODUCE_ERRORS
from stream.topics import logical_name, topic_name

log = logging.getLogger(__name__)

#: Topics that ``recsys-stream ingest`` accepts: the outside world's inputs.
INGESTIBLE = ("clicks", "purchases", "impressions", "items")


class DeliveryError(RuntimeError):
    """Some messages were not acknowledged by the broker."""


class EventProducer:
    """Validating, idempotent producer for the topics of DESIGN.md section 3."""

    def __init__(self, settings: Settings, component: str = "ingest", producer: Producer | None = None):
        self.settings = settings
        self.component = component
        self._producer = producer or make_producer(settings, component)
        self.dead_letters = DeadLetters(settings, component, self._producer, self._delivered)
        self.delivered = 0
        self.failures: list[str] = []
        self._names: dict[str, str] = {}
        self._produced_counters: dict[str, object] = {}
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
            self.delivered += 1
            topic = msg.topic()
            counter = self._produced_counters.get(topic)
            if counter is None:
                counter = self._produced_counters[topic] = EVENTS_PRODUCED.labels(
                    topic=self._logical(topic), component=self.component)
            counter.inc()
        else:
            PRODUCE_ERRORS.labels(topic=self._logical(msg.topic()), component=self.component).inc()
            if len(self.failures) < 100:
                self.failures.append(f"{msg.topic()}: {err.str()}")
            log.error("delivery to %s failed: %s", msg.topic(), err.str())

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered, **extra)
                self._unpolled += 1
                if self._unpolled >= 500:   # serve delivery reports now and then, not per message
                    self._unpolled = 0
                    self._producer.poll(0)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)

    def send(self, logical: str, event: msgspec.Struct) -> None:
        """Produce an event built in code (already typed); keyed by its contract's key."""
        self._produce(self._topic(logical), schemas.key_of(logical, event), schemas.encode(event))

    def send_record(self, logical: str, key: bytes, value: bytes | None, partition: int) -> None:
        """Produce an internal record (a changelog entry; None is a tombstone) to a chosen partition."""
        self._produce(self._topic(logical), key, value, partition)

    def send_raw(self, logical: str, raw: bytes, *, line: int | None = None) -> str | None:
        """Validate raw JSON; produce it if valid, else dead-letter it.

        Returns the reason it was refused, or None when it was produced.
        """
        try:
            event = schemas.decode(logical, raw)
        except schemas.InvalidMessage as exc:
            self.dead_letters.send(self._topic(logical), raw, exc.reason, exc.detail, line=line)
            return exc.reason
        # Forward the caller's bytes unchanged: unknown fields survive for newer consumers.
        self._produce(self._topic(logical), schemas.key_of(logical, event), bytes(raw))
        return None

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every acknowledgement; raise DeliveryError if any message was not delivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} messages still unacknowledged after {timeout:.0f}s")
        if self.failures:
            raise DeliveryError(
                f"{len(self.failures)} deliveries failed, first: {self.failures[0]}"
            )

    def release(self) -> None:
        """Close the client's connections and threads without waiting for deliveries."""
        self._producer.close()

    def close(self, timeout: float = 30.0) -> None:
        """Flush (raising on undelivered messages), then release the client."""
        try:
            self.flush(timeout)
        finally:
            self.release()

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class IngestReport:
    path: str
    topic: str
    read: int = 0
    produced: int = 0
    dead_lettered: int = 0
    blank: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    delivery_failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["events_per_second"] = round(self.read / self.seconds, 1) if self.seconds else None
        return out


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, bytes read so far, line without its newline)."""
    offset = 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            offset += len(line)
            yield number, offset, line.rstrip(b"\r\n")


def ingest_file(
    settings: Settings,
    path: Path,
    logical: str,
    progress: Callable[[int], None] | None = None,  # called with bytes read so far
    producer: EventProducer | None = None,
) -> IngestReport:
    """Validate and produce every line of a JSONL file; invalid lines go to the DLQ with their line number.

    Delivery failures do not raise: they are listed in the report, which the caller
    turns into a non-zero exit.
    """
    if logical not in INGESTIBLE:
        raise ValueError(f"cannot ingest into {logical!r}; choose one of {', '.join(INGESTIBLE)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    own = producer is None
    out = producer or EventProducer(settings, component="ingest")
    report = IngestReport(path=str(path), topic=topic_name(settings, logical))
    started = time.monotonic()
    try:
        offset = 0
        for number, offset, raw in _lines(path):
            if not raw.strip():
                report.blank += 1
                INGEST_LINES.labels(topic=logical, status="blank").inc()
                continue
            report.read += 1
            reason = out.send_raw(logical, raw, line=number)
            if reason is None:
                report.produced += 1
                INGEST_LINES.labels(topic=logical, status="produced").inc()
            else:
                report.dead_lettered += 1
                report.reasons[reason] = report.reasons.get(reason, 0) + 1
                INGEST_LINES.labels(topic=logical, status="dead_lettered").inc()
            if progress is not None and number % 1000 == 0:
                progress(offset)
        if progress is not None:
            progress(offset)
        try:
            out.flush()
        except DeliveryError as exc:
            report.delivery_failures = list(out.failures) or [str(exc)]
    finally:
        report.seconds = time.monotonic() - started
        if own:
            out.release()
    return report
