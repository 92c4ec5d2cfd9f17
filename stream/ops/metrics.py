"""Prometheus metrics shared by every role, and the ``/metrics`` endpoint.

Names follow ``recsys_<what>_<unit>`` (docs/ARCHITECTURE.md, "Metrics"). Labels stay
low-cardinality: topic, component, status, reason; never user or item ids.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

EVENTS_PRODUCED = Counter(
    "recsys_events_produced_total",
    "Messages acknowledged by the broker, by topic and producing component.",
    ["topic", "component"],
)
PRODUCE_ERRORS = Counter(
    "recsys_produce_errors_total",
    "Messages the broker did not acknowledge (delivery failed after retries).",
    ["topic", "component"],
)
EVENTS_CONSUMED = Counter(
    "recsys_events_consumed_total",
    "Messages read from Kafka and decoded, by topic, component and status (ok or invalid).",
    ["topic", "component", "status"],
)
DEAD_LETTERS = Counter(
    "recsys_dead_letters_total",
    "Messages sent to the dead-letter topic, by source topic, component and reason.",
    ["topic", "component", "reason"],
)
INGEST_LINES = Counter(
    "recsys_ingest_lines_total",
    "Lines read by `recsys-stream ingest`, by target topic and outcome.",
    ["topic", "status"],
)
PRODUCE_LATENCY = Histogram(
    "recsys_produce_latency_seconds",
    "Time from produce() to broker acknowledgement.",
    ["topic"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

REPLAY_ROWS = Gauge(
    "recsys_replay_experiences",
    "Experiences held by the replay store, by tier (recent window or reservoir).",
    ["tier"],
)
REPLAY_INSERTS = Counter(
    "recsys_replay_inserts_total",
    "Experiences offered to the replay store, by outcome (added, or duplicate of one already held).",
    ["status"],
)
REPLAY_BATCH_SECONDS = Histogram(
    "recsys_replay_batch_seconds",
    "Time to make one consumed batch durable in the replay store.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


CONSUMER_LAG = Gauge(
    "recsys_consumer_lag_messages",
    "Messages on the broker beyond this consumer's position, summed over its assigned partitions, by component "
    "and logical topic (high watermark from the latest fetch responses).",
    ["component", "topic"],
)


class Tally:
    """Counts kept as plain numbers on a hot path and added to their Prometheus children once per batch.

    A labelled child's ``inc`` takes a lock and checks its type on every call: per message
    and per experience that cost more than the join itself. Scrapes see batch boundaries.
    """

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}

    def add(self, child: Any, amount: float = 1.0) -> None:
        self._counts[child] = self._counts.get(child, 0.0) + amount

    def publish(self) -> None:
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)


class LagReporter:
    """Updates ``recsys_consumer_lag_messages`` for one consumer every ``every`` seconds (cheap: cached
    high watermarks, no broker round trip; ListOffsets would undercount on the embedded broker)."""

    def __init__(self, component: str, logical_of: dict[str, str], every: float = 5.0) -> None:
        self.component, self.logical_of, self.every = component, logical_of, every
        self._last = 0.0

    def maybe_report(self, consumer, now: float) -> None:
        if now - self._last < self.every:
            return
        self._last = now
        try:
            assigned = consumer.assignment()
            totals = dict.fromkeys(self.logical_of.values(), 0)
            for tp in consumer.position(assigned) if assigned else []:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0 and tp.offset >= 0 and tp.topic in self.logical_of:
                    totals[self.logical_of[tp.topic]] += max(0, high - tp.offset)
        except Exception as exc:  # noqa: BLE001 - a metric must never stop a worker
            log.debug("lag not available: %s", exc)
            return
        for logical, lag in totals.items():
            CONSUMER_LAG.labels(self.component, logical).set(lag)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` in a background thread; port 0 picks a free one. Returns the port."""
    server, _thread = start_http_server(port, addr=addr)
    bound = server.server_address[1]
    log.info("serving /metrics on http://%s:%d/metrics", addr, bound)
    return bound
