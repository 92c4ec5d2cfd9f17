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
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from stream import schemas
from stream.join import state as join_state
from stream.join.reward_join import Forgotten, JoinConfig, JoinOutput, OpenRequest, RewardJoin
from stream.join.watermark import InputWatermarks
from stream.kafka.dead_letters import decode_consumed, envelope
from stream.kafka.metrics import Tally

SOURCES = ("impressions", "clicks", "purchases")

EXPERIENCES = Counter(
    "recsys_experiences_produced_total",
    "Experiences emitted by the reward join, by kind (click, no_click, purchase).",
    ["kind"],
)
REWARD = Counter(
    "recsys_reward_total",
    "Sum of the rewards of emitted experiences, by kind: its rate over the experiences' rate is reward per shown "
    "item.",
    ["kind"],
)
ARM_REWARD = Counter(
    "recsys_arm_reward_total",
    "Sum of the rewards of emitted experiences by experiment arm (the impression's; `none` outside experiments): "
    "over recsys_scorer_arm_requests_total it is each arm's reward per request.",
    ["arm"],
)
#: Distinct arm labels exported; the arm is the impression's word, so a flood of forged names becomes "other"
#: instead of a series each.
MAX_ARM_SERIES = 16
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

_EXPERIENCE_KINDS = {kind: EXPERIENCES.labels(kind=kind) for kind in ("click", "no_click", "purchase")}
_REWARD_KINDS = {kind: REWARD.labels(kind=kind) for kind in ("click", "no_click", "purchase")}


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

    def extend(self, other: Outcome) -> None:
        self.experiences.extend(other.experiences)
        self.dead_letters.extend(other.dead_letters)


class RewardProcessor:
    def __init__(self, config: JoinConfig | None = None, component: str = "process",
                 clock: Callable[[], float] = time.time, checkpointed: bool = True,
                 user_features: int | None = None) -> None:
        self.config = config or JoinConfig()
        #: The policy's context width (RECSYS_USER_FEATURES): an impression of another width is refused at the
        #: join's input, where ``dlq replay`` can resend it once the setting is fixed (None: not checked).
        self.user_features = user_features
        #: State written through ``changes()`` (the batch worker): dedupe ids expire by checkpointed event time.
        self.checkpointed = checkpointed
        self.component = component
        self.clock = clock
        self.joins: dict[int, RewardJoin] = {}
        self.watermarks: dict[int, InputWatermarks] = {}
        # Original bytes and origin of the clicks/purchases the join has parked, so a
        # later orphan rejection can dead-letter them as they arrived.
        self._held: dict[str, tuple[bytes, Coordinates]] = {}
        self._written_progress: dict[int, bytes] = {}
        #: Counters of this batch, published with the gauges (``publish_metrics``) by the driving loop.
        self.tally = Tally()
        self._arm_children: dict[str | None, object] = {}

    def _partition(self, partition: int) -> tuple[RewardJoin, InputWatermarks]:
        join = self.joins.get(partition)
        if join is None:
            join = self.joins[partition] = RewardJoin(self.config, self.checkpointed)
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
                                        where.offset, where.key, self.tally, self.user_features)
        if letter is not None:
            out.dead_letters.append(letter)
            return out
        ahead = event.ts - self.clock()
        if ahead > self.config.max_future:
            # One outlier must not move the partition's event time: every later event would be late.
            out.dead_letters.append(envelope(
                where.topic, raw, "future", f"ts {event.ts:.3f} is {ahead:.0f}s ahead of this worker's clock; "
                f"at most {self.config.max_future:g}s is accepted", self.component, key=where.key,
                partition=where.partition, offset=where.offset))
            return out
        join, marks = self._partition(where.partition)
        if logical == "impressions":
            result = join.impression(event)
        else:
            result = join.click(event) if logical == "clicks" else join.purchase(event)
        marks.observe(logical, event.ts)
        self._collect(result, (event.event_id, raw, where), out)
        self._collect(join.advance(marks.value()), None, out)
        if logical != "impressions" and out.experiences:
            JOIN_LATENCY.observe(time.perf_counter() - started)
        return out

    def reached_end(self, logical: str, partition: int) -> Outcome:
        """An input partition is caught up: it no longer holds event time back."""
        join, marks = self._partition(partition)
        marks.reached_end(logical)
        return self._collect(join.advance(marks.value()))

    def finish(self, partition: int) -> Outcome:
        """Every input of ``partition`` has ended (``process --until-caught-up``): close all its windows."""
        join, marks = self._partition(partition)
        for logical in SOURCES:
            marks.reached_end(logical)
        out = self._collect(join.advance(marks.value()))
        return self._collect(join.finish(), None, out)

    def caught_up_inputs(self, partition: int) -> list[str]:
        """The inputs of ``partition`` that hold no event time back at the moment."""
        marks = self.watermarks.get(partition)
        return [] if marks is None else [s for s in SOURCES if s in marks.caught_up]

    def fell_behind(self, logical: str, partition: int) -> None:
        """An input judged caught up has unread records again: it holds event time back once more."""
        marks = self.watermarks.get(partition)
        if marks is not None:
            marks.fell_behind(logical)

    def idle(self, partition: int, seconds: float) -> Outcome:
        """Every input of the partition has been silent for ``seconds`` more of wall time."""
        join, marks = self._partition(partition)
        return self._collect(join.advance(marks.advance_by(seconds)))

    def _arm_reward(self, arm: str | None):
        child = self._arm_children.get(arm)
        if child is None:
            label = arm or "none"
            child = ARM_REWARD.labels("other" if len(self._arm_children) >= MAX_ARM_SERIES else label)
            if len(self._arm_children) < MAX_ARM_SERIES:
                self._arm_children[arm] = child
        return child

    def _collect(self, result: JoinOutput, current: tuple[str, bytes, Coordinates] | None = None,
                 out: Outcome | None = None) -> Outcome:
        """Experiences and dead letters from a join result, added to ``out`` (a new Outcome if None);
        ``current`` is (event_id, raw, origin) of the message just handled."""
        if out is None:
            out = Outcome()
        out.experiences.extend(result.experiences)
        tally = self.tally
        for experience in result.experiences:
            tally.add(_EXPERIENCE_KINDS[experience.kind])
            if experience.reward:
                tally.add(_REWARD_KINDS[experience.kind], experience.reward)
                tally.add(self._arm_reward(experience.arm), experience.reward)
        if result.duplicates:
            tally.add(JOIN_DUPLICATES, result.duplicates)
        for event_id in result.parked:
            if current is not None and current[0] == event_id:
                self._held[event_id] = (bytes(current[1]), current[2])
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
        # A released event that matched nothing is parked again in the same result: it keeps its bytes,
        # which its changelog record is written from (without them the record became a tombstone).
        parked_again = set(result.parked)
        for event_id in result.released:
            if event_id not in parked_again:
                self._held.pop(event_id, None)
        return out

    # -- durable state (the batch worker's changelog) ----------------------------------------
    def changes(self, partition: int) -> list[tuple[bytes, bytes | None]]:
        """Changelog records (key, value or None for a tombstone) for what changed in ``partition``, in
        the order they must be written."""
        join = self.joins.get(partition)
        if join is None:
            return []
        requests, legacy_forgotten, parked, rejected = join.take_changes()
        out: list[tuple[bytes, bytes | None]] = []
        # Order matters only if a crash cuts this list short, and then nothing after the last progress
        # record counts (``join_state.committed``); still, what keeps an input recognisable as a
        # repeat (rejected ids, requests) goes before what only lets state go, and event-time
        # progress goes last, so a prefix never holds time ahead of the state it moved.
        for request_id in legacy_forgotten:
            out.append((join_state.forgotten_key(request_id), None))
        for event_id, ts in rejected.items():
            value = None if ts is None else join_state.encode(join_state.RejectedRecord(ts))
            out.append((join_state.rejected_key(event_id), value))
        for request_id, state in requests.items():
            value = None if state is None else join_state.encode(join_state.RequestRecord(
                state.impression, sorted(state.clicked), sorted(state.purchased), state.closed, state.events))
            out.append((join_state.request_key(request_id), value))
        for event_id, event in parked.items():
            held = self._held.get(event_id) if event is not None else None
            value = None
            if held is not None:
                raw, where = held
                logical = "clicks" if isinstance(event, schemas.Click) else "purchases"
                value = join_state.encode(join_state.ParkedRecord(
                    logical, raw, where.topic, where.partition, where.offset, where.key))
            out.append((join_state.parked_key(event_id), value))
        # The progress record also commits the records before it (see join_state): it closes
        # every checkpoint that wrote anything, and is written alone when only time moved.
        marker = self.progress_marker(partition)
        if out or self._written_progress.get(partition) != marker[0][1]:
            self._written_progress[partition] = marker[0][1]
            out.extend(marker)
        return out

    def progress_marker(self, partition: int) -> list[tuple[bytes, bytes]]:
        """``partition``'s event-time progress as the changelog record that commits a checkpoint."""
        marks = self.watermarks[partition]
        progress = join_state.ProgressRecord(
            {str(k): v for k, v in marks.progress.items()}, marks.last, self.joins[partition].watermark)
        return [(join_state.PROGRESS, join_state.encode(progress))]

    def restore(self, partition: int, live: dict[bytes, bytes]) -> None:
        """Rebuild ``partition``'s join from its changelog (the live value per key)."""
        self.drop(partition)
        join, marks = self._partition(partition)
        requests, forgotten, parked, rejected, watermark = [], [], [], {}, float("-inf")
        for key, value in live.items():
            record = join_state.decode(key, value)
            if isinstance(record, join_state.RequestRecord):
                imp = record.impression
                requests.append(OpenRequest(
                    imp, {s.item_id: (s.position, s.propensity) for s in imp.shown},
                    set(record.clicked), set(record.purchased), record.closed, list(record.events)))
            elif isinstance(record, join_state.ForgottenRecord):
                forgotten.append(Forgotten(record.ts, record.events, key[len(join_state.FORGOTTEN):].decode()))
            elif isinstance(record, join_state.RejectedRecord):
                rejected[key[len(join_state.REJECTED):].decode()] = record.ts
            elif isinstance(record, join_state.ParkedRecord):
                event = schemas.decode(record.logical, record.raw)
                self._held[event.event_id] = (record.raw, Coordinates(
                    record.topic, record.partition, record.offset, record.key))
                parked.append(event)
            else:
                marks.progress.update(record.progress)
                marks.last = record.last
                watermark = record.watermark
                self._written_progress[partition] = value
        join.restore(requests, forgotten, parked, rejected, watermark)
        self.publish_metrics()

    def drop(self, partition: int) -> None:
        """Forget a partition this worker no longer owns (its state lives on in the changelog)."""
        join = self.joins.pop(partition, None)
        self.watermarks.pop(partition, None)
        self._written_progress.pop(partition, None)
        if join is not None:
            for event_id in join.parked_event_ids():
                self._held.pop(event_id, None)
        self.publish_metrics()

    def publish_metrics(self) -> None:
        """The batch's counts, open requests and parked events (callers publish per batch, not per message)."""
        self.tally.publish()
        OPEN_REQUESTS.set(sum(j.open_requests for j in self.joins.values()))
        PARKED.set(sum(j.parked for j in self.joins.values()))

