"""What every Kafka client of the loop counts: messages produced, refused, consumed, dead-lettered, and lag.

Labels carry logical topic names (a tenant's prefix must not multiply the series) and the
component; never user or item ids.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge

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
ASSIGNED_PARTITIONS = Gauge(
    "recsys_consumer_assigned_partitions",
    "Input partitions this group member reads (state restored), by component: 0 until its group assigns it "
    "any, which is when traffic starts to reach it.",
    ["component"],
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
