"""Scoring over Kafka: ``score-requests`` in, ``score-responses`` out (keyed by request_id), supervised.

Answers are at-least-once. Responses go out as soon as they are computed; every
``COMMIT_INTERVAL`` (and when partitions are revoked) the transport waits until the
broker acknowledged them, then commits past the requests they answer. A scorer that
dies in between leaves those requests to be answered again by whichever scorer takes
the partition: a client may see a ``request_id`` twice after a crash and keeps the
first. Nothing in a batch can stop the transport: a request that cannot be decoded is
dead-lettered, one that fails while being scored is answered with an error, a
response not acknowledged rewinds its partitions, and a failed commit is retried at
the next checkpoint (a later commit covers the earlier offsets). Should the loop itself fail (the
consumer cannot be created, the broker refuses the group), ``KafkaTransport.run``
restarts it with backoff; ``up`` is False meanwhile and ``/healthz`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge

from stream import schemas
from stream.config import Settings
from stream.kafka.clients import make_consumer
from stream.kafka.dead_letters import decode_consumed
from stream.kafka.gaps import GapGuard
from stream.kafka.producer import DeliveryError, EventProducer
from stream.kafka.topics import topic_name
from stream.serving.requests import SCORE_LATENCY, SCORE_REQUESTS, BadRequest

if TYPE_CHECKING:
    from stream.serving.scorer import Scorer

log = logging.getLogger(__name__)

TRANSPORT_UP = Gauge("recsys_scorer_kafka_transport_up", "1 while the Kafka scoring transport is consuming, else 0.")
TRANSPORT_RESTARTS = Counter(
    "recsys_scorer_kafka_transport_restarts_total", "Times the Kafka scoring transport failed and was restarted.")
COMMIT_FAILURES = Counter(
    "recsys_scorer_kafka_commit_failures_total", "Offset commits of answered requests that failed (retried).")
REDELIVERIES = Counter(
    "recsys_scorer_kafka_rewinds_total", "Batches rewound to be answered again because a response was not acknowledged.")

#: Requests read per consume call.
BATCH = 200
#: Seconds between checkpoints (acknowledgements awaited, then offsets committed): each costs the
#: broker a round trip, and a scorer that crashes answers at most this much again.
COMMIT_INTERVAL = 0.5


def committed(consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
    """Where the group resumes ``partitions`` (logical offsets where nothing is committed, or the broker is away)."""
    try:
        return consumer.committed(partitions, timeout=10)
    except KafkaException as exc:
        log.warning("committed offsets of %s unknown: %s", sorted(tp.partition for tp in partitions), exc)
        return [TopicPartition(tp.topic, tp.partition) for tp in partitions]


def read_available(consumer: Consumer, limit: int, timeout: float) -> list[Message]:
    """Wait up to ``timeout`` for one message, then take what is already fetched (at most ``limit``) without waiting.

    ``consume(limit, timeout)`` waits for ``limit`` messages or the timeout, which adds up
    to ``timeout`` to every answer at moderate load; this answers as soon as a request is in.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(limit - 1, 0)]


class KafkaTransport:
    """Answers ``score-requests`` with ``scorer``; scorers sharing a prefix share one group and split the partitions."""

    def __init__(self, settings: Settings, scorer: Scorer, stop: threading.Event, request_max_age: float = 30.0,
                 max_backoff: float = 30.0) -> None:
        self.settings = settings
        self.scorer = scorer
        self.stopping = stop
        self.request_max_age = request_max_age
        self.max_backoff = max_backoff
        self.up = False
        self.restarts = 0
        self.last_error: str | None = None
        self.answered = 0

    # -- supervision -------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stopped; restart after a failure with exponential backoff (1 s doubling to the cap)."""
        backoff = 1.0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self._serve()
                return
            except Exception as exc:  # noqa: BLE001 - the supervisor's job is to outlive any failure
                self._set_up(False)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.restarts += 1
                TRANSPORT_RESTARTS.inc()
                if time.monotonic() - started > 60:
                    backoff = 1.0           # it had been serving for a while: start the backoff over
                log.exception("kafka scoring transport failed; restarting in %.0fs", backoff)
                self.stopping.wait(backoff)
                backoff = min(self.max_backoff, backoff * 2)

    def _set_up(self, up: bool) -> None:
        self.up = up
        TRANSPORT_UP.set(1 if up else 0)

    # -- the loop ----------------------------------------------------------------------------------
    def _serve(self) -> None:
        consumer = make_consumer(self.settings, "scorer", f"{self.settings.topic_prefix}scorer", **{
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            # A fetch waits at most 10 ms. Kafka answers one as soon as a request is in; the embedded
            # Tansu only at the end of the wait, so there it is a polling interval: 5 ms loaded the
            # broker (p99 67-83 ms at 500 requests/s), 100 ms put the median at 52 ms (2026-12-06).
            "fetch.wait.max.ms": 10, "fetch.error.backoff.ms": 50})
        # Responses wait at most 1 ms to share a produce request. At 500 requests/s on the embedded
        # broker (`bench scorer --transport kafka`, three runs each, 2026-12-06): linger 5 gave p50
        # 18.5 ms / p99 30 ms, 1 gave 12 / 35-40 (with the client also at 1), 0 gave 11 / 52-57: each
        # produce request is broker work, and on a small machine the broker's CPU sets the tail.
        out = EventProducer(self.settings, "scorer", **{"linger.ms": 1})
        guard = GapGuard(consumer, "scorer")
        answered: dict[tuple[str, int], int] = {}     # next offset per partition, answered (maybe not acked)
        since: dict[tuple[str, int], int] = {}        # first offset answered since the last checkpoint
        last_checkpoint = time.monotonic()

        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("kafka scoring: answering partitions %s", sorted(tp.partition for tp in partitions))
            guard.expect(committed(consumer, partitions))

        def on_revoke(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("kafka scoring: partitions %s revoked", sorted(tp.partition for tp in partitions))
            self._checkpoint(consumer, out, answered, since, guard)   # what was answered is not answered again
            guard.forget(partitions)

        try:
            consumer.subscribe([topic_name(self.settings, "score-requests")], on_assign=on_assign,
                               on_revoke=on_revoke)
            self._set_up(True)
            while not self.stopping.is_set():
                batch = guard.admit(read_available(consumer, BATCH, 0.1))
                for key, (first, after) in self._answer(batch, out).items():
                    since.setdefault(key, first)
                    answered[key] = after
                now = time.monotonic()
                if answered and now - last_checkpoint >= COMMIT_INTERVAL:
                    self._checkpoint(consumer, out, answered, since, guard)
                    last_checkpoint = now
        finally:
            self._set_up(False)
            try:
                self._checkpoint(consumer, out, answered, since, guard)
            except KafkaException as exc:
                log.warning("closing the kafka scoring transport: %s", exc)
            consumer.close()
            out.release()

    def _checkpoint(self, consumer: Consumer, out: EventProducer, answered: dict[tuple[str, int], int],
                    since: dict[tuple[str, int], int], guard: GapGuard) -> None:
        """Wait for every response to be acknowledged, then commit past the requests they answer.

        A response not acknowledged rewinds its partitions to the first request answered
        since the last checkpoint: those are answered again rather than lost. A commit that
        fails is retried at the next checkpoint (a later commit covers the earlier offsets);
        nothing to commit is not an error.
        """
        if not answered:
            return
        try:
            out.flush(10)
        except DeliveryError as exc:
            REDELIVERIES.inc()
            log.warning("responses not acknowledged (%s); answering %d partitions' requests again", exc, len(since))
            for (topic, partition), first in since.items():
                try:
                    consumer.seek(TopicPartition(topic, partition, first))
                    guard.expect([TopicPartition(topic, partition, first)])
                except KafkaException as seek_error:   # no longer ours: its new owner reads from the commit
                    log.info("not rewinding %s[%d]: %s", topic, partition, seek_error)
            answered.clear()
            since.clear()
            return
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in answered.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError._NO_OFFSET:
                COMMIT_FAILURES.inc()
                log.warning("offset commit failed (retried at the next checkpoint): %s", error.str())
                return
        answered.clear()
        since.clear()

    def _answer(self, batch: list[Message], out: EventProducer) -> dict[tuple[str, int], tuple[int, int]]:
        """Answer every request of the batch (or dead-letter it); returns (first, next) offset per partition."""
        offsets: dict[tuple[str, int], tuple[int, int]] = {}
        now = time.time()
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("score-requests consumer: %s", err.str())
                continue
            key = (msg.topic(), msg.partition())
            offsets[key] = (offsets[key][0] if key in offsets else msg.offset(), msg.offset() + 1)
            started = time.perf_counter()
            request, letter = decode_consumed("score-requests", msg.value() or b"", "scorer", msg.topic(),
                                              msg.partition(), msg.offset(), msg.key())
            if letter is not None:
                out.dead_letters.publish(letter)
                SCORE_REQUESTS.labels("kafka", "invalid").inc()
                continue
            _kind, sent_ms = msg.timestamp()
            age = now - sent_ms / 1000.0 if sent_ms > 0 else 0.0
            status = "ok"
            try:
                if age > self.request_max_age:
                    status = "expired"
                    raise BadRequest(f"request expired: sent {age:.0f}s ago, limit {self.request_max_age:g}s")
                response = self.scorer.score(request)
            except BadRequest as exc:
                status = "expired" if status == "expired" else "invalid"
                response = self._error(request, str(exc))
            except Exception as exc:  # noqa: BLE001 - one request must not stop the others
                log.exception("scoring request %s failed", request.request_id)
                status = "error"
                response = self._error(request, f"internal error: {type(exc).__name__}")
            out.send("score-responses", response)
            self.answered += 1
            SCORE_REQUESTS.labels("kafka", status).inc()
            SCORE_LATENCY.labels("kafka").observe(time.perf_counter() - started)
        return offsets

    def _error(self, request: schemas.ScoreRequest, message: str) -> schemas.ScoreResponse:
        return schemas.ScoreResponse(request.request_id or "unknown", request.user_id, self.scorer.version, [],
                                     error=message, ts=time.time())
