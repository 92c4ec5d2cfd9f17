"""The learner worker: experiences from Kafka into the learning loop, gated policy versions out.

It follows ``experiences`` in a consumer group and hands what it reads to the
continual-learning loop (``models/loop.py``: hold-out split, update plan, replay mix,
meta tasks, gate, consolidation), the one every benchmark drives too. The worker brings
only what is Kafka's: the records (``stream/learner/sources.py``: with the replay
store for replayed rows and users' earlier outcomes), where versions go
(``stream/learner/chain.py``: numbers, deltas, retention on the policies topic), when
to train (as soon as a few records wait: a new experience reaches an update within the
next loop turn, in as many steps as fit before the next version is due: ``pace.py``),
when to publish beyond the loop's own cadence (every ``publish_every_seconds``),
checkpoints and offsets. A backfill (``--until-caught-up``)
trains in whole turns and publishes by update count alone, so it makes the versions a
benchmark driving the loop over the same records makes (``ContinualLoop.learn_backlog``).

A checkpoint (weights, optimiser, EWC and distillation state, meta parameters,
the live version and the consumer positions) is written after a publish at most every
``checkpoint_every_seconds`` and on a graceful stop, to a temporary file renamed over
the last one, so a SIGKILL leaves either the old or the new one. On start the worker
resumes from it and seeks to its positions (what was trained on since is read and
trained on again, nothing is lost); versions continue from the higher of the
checkpoint's and the topic's latest.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from models import checkpoint
from models.agent import OURS, Agent, AgentConfig, Variant
from models.encoders import TextEncoder
from models.evaluation import estimate
from models.loop import ContinualLoop, LoopConfig, Turn
from models.policy import PER_VERSION, PolicyConfig, TwoTowerPolicy
from stream import schemas
from stream.config import Settings
from stream.items.embeddings import Catalogue
from stream.kafka.clients import make_consumer
from stream.kafka.dead_letters import decode_consumed
from stream.kafka.follower import TopicFollower
from stream.kafka.gaps import GapGuard
from stream.kafka.metrics import ASSIGNED_PARTITIONS, LagReporter
from stream.kafka.topics import topic_name
from stream.learner.batches import ExperienceBatcher, is_full_decision
from stream.learner.chain import VersionChain
from stream.learner.forgetting_probes import ForgettingProbes, ProbeConfig
from stream.learner.pace import Pace
from stream.learner.recent_ids import RecentIds
from stream.learner.sources import StoreReplay, StreamExperiences, trains_arm
from stream.ops.memory import TRIM_SECONDS, MallocTrimmer
from stream.policy.bus import (
    LivePolicy,
    PolicyPublisher,
    PolicySubscriber,
    newest_verified,
    one_per_number,
    read_versions,
)
from stream.policy.trust import trust_of
from stream.replay.service import default_store_path
from stream.replay.store import ReplaySampler

log = logging.getLogger(__name__)

#: What the experiences consumer may fetch ahead of training: librdkafka's default, 64 MB, is what a learner
#: behind the stream would hold (in soaks where it fell a minute behind, its memory rose with the lag);
#: 16 MB is ~20 s at twice the demo's load.
PREFETCH_KBYTES = 16384
#: Messages per consume call. A full read means more is waiting: the loop reads on, up to the agent's
#: ``max_turn``, before training, so a backlog reaches ``Agent.plan`` whole and is trained in its bigger
#: steps (in a soak the learner fell a minute behind while every turn saw at most one read of 1,000).
READ_BATCH = 1000

UPDATES = Counter("recsys_learner_updates_total", "Optimiser steps taken by the learner.")
SAMPLES = Counter("recsys_learner_samples_total", "Experiences trained on, by source (fresh, replay, task).",
                  ["source"])
LOSS = Gauge("recsys_learner_loss", "Last training loss, by part (loss, reward_model_loss, pg_loss, ...).", ["part"])
GATE = Counter("recsys_learner_gate_total", "Publish decisions of the off-policy gate, by outcome (passed, refused, "
               "too_few_decisions, no_live).", ["outcome"])
GATE_ESTIMATE = Gauge("recsys_learner_gate_estimate", "Last doubly robust estimate on held-out logs, by policy "
                      "(candidate, live), and the bounds of their paired difference's interval (diff_low, diff_high).",
                      ["policy"])
REFUSED = Counter("recsys_learner_refused_experiences_total",
                  "Experiences not trained on, by reason (width: context.features not the policy's width; "
                  "other_arm: served to another arm of an online experiment, which its own learner trains on).",
                  ["reason"])
TAKEN = Counter("recsys_learner_experiences_taken_total",
                "Experiences queued for the loop (to train on, or held out to judge candidates): of this learner's "
                "experiment arm only.")
UPDATE_SECONDS = Histogram("recsys_learner_update_seconds", "Time of one optimiser step (batch building included).",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
FRESH_DELAY = Histogram("recsys_learner_fresh_delay_seconds",
                        "From the learner reading an experience to the update that first trained on it.",
                        buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60))
EVENT_TO_UPDATE = Histogram("recsys_learner_event_to_update_seconds",
                            "From an experience's event time (a click, a closed window) to the update that first "
                            "trained on it.", buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300))
CHECKPOINTS = Counter("recsys_learner_checkpoints_total", "Checkpoints written.")
PUBLISH_STAGE = Histogram("recsys_learner_publish_stage_seconds",
                          "Time of each stage of a publish: gate (the candidate judged on held-out decisions), "
                          "publish (its delta or snapshot written and acknowledged), consolidate, checkpoint.",
                          ["stage"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
REPEATS = Counter("recsys_learner_repeated_experiences_total",
                  "Experiences skipped because their event_id was already taken (at-least-once topic).")


@dataclass(frozen=True)
class LearnerWorkerConfig:
    """How the worker runs the loop on a stream; what it learns and serves is ``AgentConfig``'s."""

    #: Fresh experiences before the first update (a handful is noise).
    min_fresh: int = 32
    publish_every_seconds: float = 10.0
    #: The learning loop's own settings (hold-out share, the gate's decisions, the seed of the initial weights
    #: and of the meta tasks: a backfill of the same experiences makes the same versions).
    loop: LoopConfig = field(default_factory=LoopConfig)
    #: Versions kept on the policies topic (older ones are tombstoned): what rollback can reach.
    retain_versions: int = 20
    #: Held-out decisions of each period become a probe set every published version is re-scored on.
    probe_period_seconds: float = 900.0
    probe_sets: int = 4
    #: Experience ids remembered to skip repeats (the experiences topic is at-least-once).
    dedupe_window: int = 500_000
    #: A backfill (``learn --until-caught-up``): stop once everything on the topic is trained on.
    until_caught_up: bool = False
    #: Versions are deltas of their parent (``models/delta.py``) but for a full snapshot every this many
    #: versions or seconds (and the first after a start): what a late reader catches up from.
    full_every: int = 100
    full_every_seconds: float = 300.0
    #: Seconds between checkpoints (written after a publish; 0: after every one). Each is the whole state
    #: with the held-out decisions, ~34 MB at the soak's load: every 2 s publish was 17 MB/s written and
    #: fsynced, and churn for the allocator. A kill -9 costs re-training on at most this much of the stream.
    checkpoint_every_seconds: float = 30.0
    #: Seconds between rounds that collect young cyclic garbage and give freed heap back to the system
    #: (``MallocTrimmer``; 0: never): the gate's batches, snapshots and checkpoints free tens of MB at a time.
    trim_seconds: float = TRIM_SECONDS


def _compact(event: schemas.Experience) -> schemas.Experience:
    """The experience with its item ids shared with every other held one: a decoded decision carries its own
    copy of each candidate's id, which made the held-out decisions 4x larger and the learner's memory climb."""
    return msgspec.structs.replace(event, action=sys.intern(event.action),
                                   candidates=[sys.intern(c) for c in event.candidates or ()])


def learner_group(settings: Settings) -> str:
    """The learner's consumer group: one per policy name, so the learners of an experiment's arms each read the
    whole topic (the default name keeps the group it always had)."""
    name = settings.policy_name
    return f"{settings.topic_prefix}learner" + ("" if name == "default" else f".{name}")


class LearnerWorker:
    def __init__(self, settings: Settings, encoder: TextEncoder, config: LearnerWorkerConfig | None = None,
                 agent_config: AgentConfig | None = None, model_config: PolicyConfig | None = None,
                 store_path: Path | None = None, checkpoint_path: Path | None = None, variant: Variant = OURS) -> None:
        self.settings = settings
        self.config = cfg = config or LearnerWorkerConfig()
        model_config = model_config or PolicyConfig(text_dim=encoder.dim, user_features=settings.user_features)
        if model_config.text_dim != encoder.dim:
            raise ValueError(f"policy text_dim {model_config.text_dim} != encoder dim {encoder.dim}")
        self.agent = Agent(model_config, agent_config, variant, seed=cfg.loop.seed)
        self.learner = self.agent.learner
        self.catalogue = Catalogue(encoder, "learner")
        self.items = TopicFollower(settings, "items", self.catalogue.add, from_start=True, component="learner")
        self.batcher = ExperienceBatcher(model_config, self.catalogue)
        self.replay = ReplaySampler(store_path or default_store_path(settings))
        #: The experiment arm this learner trains for: its policy name (``learn --name``).
        self.arm = settings.policy_name
        self.publisher = PolicyPublisher(settings, "learner")
        self.chain = VersionChain(self.publisher, cfg.full_every, cfg.full_every_seconds, cfg.retain_versions,
                                  metrics=lambda: {"trained_through_ts": self.trained_through})
        self.loop: ContinualLoop[schemas.Experience] = ContinualLoop(
            self.agent, StreamExperiences(self.batcher, self.replay, self.agent.config.history), self.chain,
            StoreReplay(self.batcher, self.replay, self.arm), cfg.loop)
        self.checkpoint_path = checkpoint_path or settings.data_dir / "learner" / \
            f"{settings.topic_prefix}{settings.policy_name}.ckpt"
        self.topic = topic_name(settings, "experiences")
        self.lag = LagReporter("learner", {self.topic: "experiences"})
        self.positions: dict[int, int] = {}
        # (read at, partition, offset, experience): read but not yet taken by a turn (trained on or held out).
        self.fresh: deque[tuple[float, int, int, schemas.Experience]] = deque()
        #: How many of ``fresh`` the loop will train on (the rest are held out).
        self.trainable = 0
        self.probes = ForgettingProbes(ProbeConfig(period_seconds=cfg.probe_period_seconds, keep=cfg.probe_sets))
        #: Streaming turns take fewer, bigger steps when the next version is due soon.
        self.pace = Pace()
        self.seen = RecentIds(cfg.dedupe_window)
        self.trained_through = 0.0
        self.stop_event = threading.Event()
        # Follows the policies topic for operator rollbacks (set from the subscriber's thread); its own
        # versions are passed over unloaded.
        self.policies = PolicySubscriber(settings, "learner", on_swap=self._on_policy,
                                         accept=lambda header: "rollback_of" in header.metrics)
        self._rollback: LivePolicy | None = None
        self._last_checkpoint = float("-inf")     # monotonic seconds; the first publish checkpoints

    @property
    def version(self) -> int:
        """The live version: the last this learner published, found on the topic, or was rolled back to."""
        return self.chain.version

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        started = time.perf_counter()
        live = self.loop.live
        state = {
            "learner": self.learner.state_dict(snapshot=False),     # written out below, before any update
            "model_config": self.learner.model.config.to_dict(),
            "version": self.chain.version,
            "live": live.state_dict() if live is not None else None,
            "live_config": live.config.to_dict() if live is not None else None,
            "positions": self._resume_positions(),
            "trained_through": self.trained_through,
            "holdout": [schemas.encode(e) for e in self.loop.holdout],
            "probes": self.probes.state_dict(),
            "saved_at": time.time(),
        }
        checkpoint.save(self.checkpoint_path, state)
        CHECKPOINTS.inc()
        took = time.perf_counter() - started
        PUBLISH_STAGE.labels("checkpoint").observe(took)
        log.debug("checkpoint written in %.2fs", took)

    def _resume_positions(self) -> dict[int, int]:
        """Where a restart reads from: past what a turn took, not past what was only read."""
        positions = dict(self.positions)
        for _, partition, offset, _ in self.fresh:
            positions[partition] = min(positions.get(partition, offset), offset)
        return positions

    def resume(self) -> bool:
        """Load the last checkpoint if there is one; True when resumed."""
        if not self.checkpoint_path.exists():
            return False
        state = checkpoint.load(self.checkpoint_path, self.learner.device)   # CheckpointError: foreign or damaged
        # How versions are served (the exploration) is not the model's shape: changing it keeps the checkpoint.
        saved = {k: v for k, v in state["model_config"].items() if k not in PER_VERSION}
        if saved != {k: v for k, v in self.learner.model.config.to_dict().items() if k not in PER_VERSION}:
            raise checkpoint.CheckpointError(f"checkpoint {self.checkpoint_path} holds a model of another shape; move it away "
                             "to start from scratch")
        self.learner.load_state_dict(state["learner"])
        self.chain.version = state["version"]
        if state["live"] is not None:
            # The live version as it is served (older checkpoints keep only its weights).
            served = state.get("live_config")
            live = TwoTowerPolicy(PolicyConfig.from_dict(served) if served else self.learner.model.config)
            live.load_state_dict(state["live"])
            self.loop.live = live
        self.positions = {int(p): o for p, o in state["positions"].items()}
        self.trained_through = state["trained_through"]
        decoder = schemas.decoder_for("experiences")
        self.loop.holdout.extend(_compact(e) for e in map(decoder.decode, state["holdout"]) if is_full_decision(e))
        if "probes" in state:   # checkpoints written before probe sets existed have none
            self.probes.load_state_dict(state["probes"])
        log.info("resumed from %s: version %d, step %d, positions %s", self.checkpoint_path, self.chain.version,
                 self.learner.step, self.positions)
        return True

    # -- the loop -------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The checkpoint's positions, not the group's: the model state matches them.
        for tp in partitions:
            if tp.partition in self.positions:
                tp.offset = self.positions[tp.partition]
        self.guard.expect(partitions)
        consumer.assign(partitions)
        ASSIGNED_PARTITIONS.labels("learner").set(len(partitions))

    def _start_chain(self) -> None:
        """Versions continue after the newest verified one on the topic when it is beyond the checkpoint's."""
        chain = self.chain
        on_topic = read_versions(self.settings)
        newest = newest_verified(on_topic, trust_of(self.settings))
        claimants = one_per_number(on_topic, trust_of(self.settings))   # each number's first trusted writer
        if newest is not None:
            chain.retained.extend(v.header for v in claimants if v.version <= newest.version)
        if newest is not None and newest.version > chain.version:
            log.info("topic holds verified version %d beyond the checkpoint's %d: continuing after it",
                     newest.version, chain.version)
            chain.version = newest.version
        # Numbers past the newest that verifies (versions on a parent no reader holds) stay taken.
        chain.last_number = max([chain.version, *(v.version for v in claimants)])
        chain.export()

    def run(self, max_seconds: float | None = None) -> None:
        """Learn until ``stop()`` (or ``max_seconds``). With ``config.until_caught_up`` (a backfill): once
        every experience on the topic has been read and trained on, publish what was learned since the last
        version (the gate still judges it), checkpoint, commit and return."""
        until_caught_up = self.config.until_caught_up
        self.items.start()
        self.items.caught_up.wait(120)
        self.resume()
        self.policies.start()       # a rollback published while the learner was down is adopted below
        self._start_chain()
        consumer = make_consumer(self.settings, "learner", learner_group(self.settings), **{
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": PREFETCH_KBYTES})
        self.guard = GapGuard(consumer, "learner")
        consumer.subscribe([self.topic], on_assign=self._on_assign)
        started = last_publish = last_end_check = time.monotonic()
        last_update = 0.0
        stop_trimming = threading.Event()
        if self.config.trim_seconds > 0:
            MallocTrimmer(self.config.trim_seconds, stop_trimming, "learner").start()
        try:
            while not self.stop_event.is_set():
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                rollback, self._rollback = self._rollback, None
                if rollback is not None:
                    self._adopt_rollback(rollback)
                last_read = self._read(consumer)
                now = time.monotonic()
                self.lag.maybe_report(consumer, now)
                if until_caught_up:
                    # Whole turns, and versions by update count alone: what the records decide, not the clock.
                    if self.trainable >= self.agent.config.max_turn:
                        self._turn()
                        self._publish_if_due(consumer)
                    elif last_read < READ_BATCH and now - last_end_check >= 0.25:
                        last_end_check = now
                        if self._read_to_end(consumer):
                            self._drain(consumer)
                            break
                    continue
                ready = self.trainable >= self.config.min_fresh or (self.fresh and now - last_update > 1.0)
                if ready and (self.learner.step > 0 or self.trainable >= self.config.min_fresh):
                    self._turn(self.pace.steps_until(last_publish + self.config.publish_every_seconds))
                    last_update = now = time.monotonic()
                if self.loop.publish_due or (self.loop.updates_since_publish > 0
                                             and now - last_publish >= self.config.publish_every_seconds):
                    last_publish = now      # the cadence counts from when a version was due, not from when it left
                    if self.trainable:
                        # What was read since the last turn goes into this version, in one step: a whole
                        # turn here would hold the version back by up to max_updates_per_turn updates.
                        self._turn(1)
                        last_update = time.monotonic()
                    self._publish()
                    self._checkpoint_if_due(consumer, time.monotonic())
            self._checkpoint_and_commit(consumer)     # a graceful stop keeps what was learned since
        finally:
            stop_trimming.set()
            consumer.close()
            self.items.stopping.set()
            self.policies.stop()
            self.publisher.close()

    def stop(self) -> None:
        self.stop_event.set()

    def _publish_if_due(self, consumer: Consumer) -> None:
        if self.loop.publish_due:
            self._publish()
            self._checkpoint_if_due(consumer, time.monotonic())

    def _drain(self, consumer: Consumer) -> None:
        """A backfill read everything: train on what waits in whole turns, and publish what was learned since
        the last version (``ContinualLoop.learn_backlog``'s ending)."""
        while self.fresh:
            self._turn()
            self._publish_if_due(consumer)
        if self.loop.updates_since_publish > 0:
            self._publish()
        log.info("backfill trained on everything on the topic: v%d live after %d updates", self.chain.version,
                 self.learner.step)

    def _read_to_end(self, consumer: Consumer) -> bool:
        """Every assigned partition read to the broker's end (a drained queue and a position at the high
        watermark, as the join worker judges its inputs); False before the group assigned anything."""
        assigned = consumer.assignment()
        if not assigned:
            return False
        for tp in assigned:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
            except Exception:  # noqa: BLE001 - the broker did not answer: not provably at the end
                return False
            if high > low and self.positions.get(tp.partition, low) < high:
                return False
        return True

    def _on_policy(self, live: LivePolicy) -> None:
        """A rollback found while the subscriber catches up may be older than the checkpoint (adopt it only
        when newer); one that arrives while following was written since this learner started, so it is the
        operator's word now, whatever number it got (the subscriber passes on only the first claimant of a
        number, so a rollback that lost its number to this learner never arrives)."""
        if live.version > self.chain.version or self.policies.caught_up:
            self._rollback = live

    def _adopt_rollback(self, live: LivePolicy) -> None:
        """An operator rolled back: the loop trains on from those weights and gates against them; the chain
        numbers on from the rollback with a full snapshot."""
        self.loop.adopt(live.model)
        self.chain.adopt(live.header)
        log.warning("v%d is a rollback to v%d: training continues from its weights and candidates are gated "
                    "against it", live.version, int(live.header.metrics["rollback_of"]))

    def _checkpoint_if_due(self, consumer: Consumer, now: float) -> bool:
        """After a publish: checkpoint and commit if ``checkpoint_every_seconds`` passed since the last one
        (the first publish always does)."""
        if now - self._last_checkpoint < self.config.checkpoint_every_seconds:
            return False
        self._checkpoint_and_commit(consumer)
        self._last_checkpoint = now
        return True

    def _checkpoint_and_commit(self, consumer: Consumer) -> None:
        self.checkpoint()
        positions = self._resume_positions()
        if positions:
            try:
                consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in positions.items()],
                                asynchronous=False)
            except KafkaException as exc:   # the checkpoint holds the positions; the group's copy is for lag
                log.warning("offset commit failed: %s", exc)

    def _read(self, consumer: Consumer) -> int:
        """Take what has arrived, reading on while reads come back full (more is waiting) until a whole turn
        waits; returns the size of the last read."""
        messages = consumer.consume(READ_BATCH, 0.05)
        self._take(self.guard.admit(messages))
        while len(messages) == READ_BATCH and self.trainable < self.agent.config.max_turn:
            messages = consumer.consume(READ_BATCH, 0)
            self._take(self.guard.admit(messages))
        return len(messages)

    def _take(self, messages) -> None:
        for msg in messages:
            if msg.error() is not None:
                log.warning("experiences consumer: %s", msg.error().str())
                continue
            self.positions[msg.partition()] = msg.offset() + 1
            event, letter = decode_consumed("experiences", msg.value(), "learner", msg.topic(), msg.partition(),
                                            msg.offset(), msg.key())
            if letter is not None:
                continue    # the replay service dead-letters invalid experiences; the learner skips them
            self._accept(event, msg.partition(), msg.offset())

    def _accept(self, event: schemas.Experience, partition: int, offset: int) -> bool:
        """Queue one experience for the loop, once: the topic is at-least-once (a restarted join re-emits
        with the same ids), and a repeat must not be trained on twice."""
        if self.seen.seen(event.event_id):
            REPEATS.inc()
            return False
        if not trains_arm(event, self.arm):
            REFUSED.labels("other_arm").inc()      # another arm's learner trains on it
            return False
        if not self.batcher.fits(event):
            REFUSED.labels("width").inc()      # the replay service dead-letters it with its reason
            return False
        event = _compact(event)
        TAKEN.inc()
        self.fresh.append((time.monotonic(), partition, offset, event))
        self.trainable += self.loop.trains_on(event)
        return True

    def _turn(self, max_updates: int | None = None) -> Turn[schemas.Experience]:
        """One turn of the loop over what waits (a backlog in bigger steps, so the learner keeps up with the
        stream instead of falling further behind it), and its metrics."""
        turn = self.loop.turn((e for *_, e in self.fresh), max_updates)
        taken = [self.fresh.popleft() for _ in range(turn.consumed)]
        self.trainable -= len(turn.trained)
        now = time.time()
        for e in turn.held:
            self.probes.offer(e, now)
        read_at = {id(e): t for t, _, _, e in taken}
        start, mono = 0, time.monotonic()
        for update in turn.updates:
            for e in turn.trained[start:start + update.fresh]:
                FRESH_DELAY.observe(update.finished - read_at[id(e)])
                EVENT_TO_UPDATE.observe(max(0.0, now - (mono - update.finished) - e.ts))
                if e.kind == "click":
                    self.trained_through = max(self.trained_through, e.ts)
            start += update.fresh
            UPDATES.inc()
            UPDATE_SECONDS.observe(update.seconds)
            self.pace.updated(update.seconds)
            SAMPLES.labels("fresh").inc(update.fresh)
            SAMPLES.labels("replay").inc(update.replayed)
            SAMPLES.labels("task").inc(update.task_samples)
            for part, value in update.stats.items():
                LOSS.labels(part).set(value)
        return turn

    def _publish(self) -> None:
        outcome = self.loop.publish()
        self.pace.published(sum(outcome.seconds.values()))
        for stage, took in outcome.seconds.items():
            PUBLISH_STAGE.labels(stage).observe(took)
        verdict = outcome.verdict
        GATE.labels(verdict.reason).inc()
        if verdict.reason in ("passed", "refused"):
            for label, value in (("candidate", verdict.candidate), ("live", verdict.live),
                                 ("diff_low", verdict.low), ("diff_high", verdict.high)):
                GATE_ESTIMATE.labels(label).set(value)
        if not verdict.publish:
            log.warning("candidate refused by the gate: DR %.4f vs live %.4f, difference in [%.4f, %.4f]; keeping v%d",
                        verdict.candidate, verdict.live, verdict.low, verdict.high, self.chain.version)
            return
        if not outcome.published:
            return      # the chain logged and counted the failure
        self.probes.rotate(time.time())
        forgetting = self.probes.score(self._probe_value)
        seconds = outcome.seconds
        log.info("v%d: gate %.2fs on %d held-out decisions, publish %.2fs, consolidate %.2fs; %d fresh waiting, "
                 "trained through %.1fs ago%s", self.chain.version, seconds["gate"], verdict.decisions,
                 seconds["publish"], seconds["consolidate"], len(self.fresh), time.time() - self.trained_through,
                 "; forgetting by probe age " + ", ".join(f"{age}: {lost:.1%}" for age, lost in forgetting.items())
                 if forgetting else "")

    def _probe_value(self, decisions: list[schemas.Experience]) -> float:
        """The live version's DR reward per decision on a probe set (point estimate, as served)."""
        return estimate(self.loop.live, self.batcher.batch(decisions), clip=10.0, n_boot=0)["dr"].value
