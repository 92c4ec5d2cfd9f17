"""What the reward-join worker does with each consumed message, independent of the consumer driving it.

Per source partition (impressions, clicks and purchases are co-partitioned by
user_id, so partition p of each belongs together) it keeps a ``RewardJoin`` and an
event-time watermark over the three inputs. A message is decoded (invalid ones
become dead letters with their coordinates), fed to the join, and the results come
back as experiences to produce and dead letters for what the join refused. Whether
faust or a batch consumer drives it, the semantics and metrics are the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from stream import schemas
from stream.dead_letters import decode_consumed, envelope
from stream.join import JoinConfig, JoinOutput, RewardJoin
from stream.watermark import InputWatermarks

SOURCES = ("impressions", "clicks", "purchases")

EXPERIENCES = Counter(
    "recsys_experiences_produced_total",
    "Experiences emitted by the reward join, by kind (click, no_click, purchase).",
    ["kind"],
)
JOIN_DUPLICATES = Counter(
    "recsys_join_duplicates_total",
    "Inputs the reward join ignored as repeats (same event_id, or a second click on one shown item).",
)
JOIN_LATENCY = Histogram(
    "recsys_join_latency_seconds",
    "Wall time from a click or purchase being consumed to its experience being ready to produce.",
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)
OPEN_REQUESTS = Gauge(
    "recsys_join_open_requests",
    "Impressions held by the reward join (click or purchase window still open).",
)
PARKED = Gauge(
    "recsys_join_parked_events",
    "Clicks and purchases waiting for an impression within the grace period.",
)


@dataclass
class Coordinates:
    topic: str
    partition: int
    offset: int
    key: bytes | None = None


@dataclass
class Outcome:
    experiences: list[schemas.Experience] = field(default_factory=list)
    dead_letters: list[schemas.DeadLetter] = field(default_factory=list)

    def extend(self, other: "Outcome") -> None:
        self.experiences.extend(other.experiences)
        self.dead_letters.extend(other.dead_letters)


class RewardProcessor:
    def __init__(self, config: JoinConfig | None = None, component: str = "process") -> None:
        self.config = config or JoinConfig()
        self.component = component
        self.joins: dict[int, RewardJoin] = {}
        self.watermarks: dict[int, InputWatermarks] = {}
        # Original bytes and origin of the clicks/purchases the join has parked, so a
        # later orphan rejection can dead-letter them as they arrived.
        self._held: dict[str, tuple[bytes, Coordinates]] = {}

    def _partition(self, partition: int) -> tuple[RewardJoin, InputWatermarks]:
        join = self.joins.get(partition)
        if join is None:
            join = self.joins[partition] = RewardJoin(self.config)
            marks = self.watermarks[partition] = InputWatermarks()
            for source in SOURCES:
                marks.register(source)
        return join, self.watermarks[partition]

    def handle(self, logical: str, raw: bytes, where: Coordinates) -> Outcome:
        """Decode, join and (maybe) move event time for one consumed message."""
        if logical not in SOURCES:
            raise ValueError(f"the reward join does not consume {logical!r}")
        started = time.perf_counter()
        out = Outcome()
        event, letter = decode_consumed(logical, raw, self.component, where.topic, where.partition,
                                        where.offset, where.key)
        if letter is not None:
            out.dead_letters.append(letter)
            return out
        join, marks = self._partition(where.partition)
        if logical == "impressions":
            result = join.impression(event)
        else:
            result = join.click(event) if logical == "clicks" else join.purchase(event)
        marks.observe(logical, event.ts)
        out.extend(self._collect(result, (event.event_id, raw, where)))
        out.extend(self._collect(join.advance(marks.value())))
        if logical != "impressions" and out.experiences:
            JOIN_LATENCY.observe(time.perf_counter() - started)
        self._update_gauges()
        return out

    def reached_end(self, logical: str, partition: int) -> Outcome:
        """An input partition is caught up: it no longer holds event time back."""
        join, marks = self._partition(partition)
        marks.reached_end(logical)
        out = self._collect(join.advance(marks.value()))
        self._update_gauges()
        return out

    def idle(self, partition: int, seconds: float) -> Outcome:
        """Every input of the partition has been silent for ``seconds`` more of wall time."""
        join, marks = self._partition(partition)
        out = self._collect(join.advance(marks.advance_by(seconds)))
        self._update_gauges()
        return out

    def _collect(self, result: JoinOutput, current: tuple[str, bytes, Coordinates] | None = None) -> Outcome:
        """Experiences and dead letters from a join result; ``current`` is (event_id, raw, origin) just handled."""
        out = Outcome(experiences=list(result.experiences))
        for experience in result.experiences:
            EXPERIENCES.labels(kind=experience.kind).inc()
        JOIN_DUPLICATES.inc(result.duplicates)
        for event_id in result.parked:
            if current is not None and current[0] == event_id:
                self._held[event_id] = (bytes(current[1]), current[2])
        for event_id in result.released:
            self._held.pop(event_id, None)
        for rejected in result.rejected:
            held = self._held.pop(rejected.event.event_id, None)
            if held is None and current is not None and current[0] == rejected.event.event_id:
                held = (current[1], current[2])
            # Every rejected event is either the one just handled or a parked one, held above.
            raw, where = held if held is not None else (schemas.encode(rejected.event), None)
            out.dead_letters.append(envelope(
                where.topic if where else rejected.kind + "s", raw, rejected.reason, rejected.detail,
                self.component, key=where.key if where else None,
                partition=where.partition if where else None, offset=where.offset if where else None))
        return out

    def _update_gauges(self) -> None:
        OPEN_REQUESTS.set(sum(j.open_requests for j in self.joins.values()))
        PARKED.set(sum(j.parked for j in self.joins.values()))

