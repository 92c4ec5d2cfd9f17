"""The learner worker: fresh experiences plus replay in, gated policy versions out.

It follows ``experiences`` in a consumer group and feeds the agent (``models/agent.py``:
what is learned, how it is explored, when a candidate may replace the live version)
as soon as a few are in (a new experience reaches an update within the next loop
turn): the agent's plan splits what waits into updates, each mixed with a uniform
sample of the replay store and a batch of per-user tasks for the meta step. Every
``publish_every`` updates or seconds the agent judges a candidate against the live
version on held-out recent logs (a share of requests never trained on); it is
published unless significantly worse, and a refusal is counted and logged.

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
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from models import checkpoint
from models.agent import Agent, AgentConfig
from models.delta import cpu_state, make_delta
from models.encoders import TextEncoder
from models.evaluation import estimate
from models.policy import PER_VERSION, PolicyConfig, TwoTowerPolicy
from stream import schemas
from stream.config import Settings
from stream.items.embeddings import Catalogue
from stream.kafka.clients import make_consumer
from stream.kafka.dead_letters import decode_consumed
from stream.kafka.follower import TopicFollower
from stream.kafka.gaps import GapGuard
from stream.kafka.metrics import LagReporter
from stream.kafka.topics import topic_name
from stream.learner.batches import ExperienceBatcher, is_full_decision
from stream.learner.forgetting_probes import ForgettingProbes, ProbeConfig
from stream.learner.recent_ids import RecentIds
from stream.ops.memory import TRIM_SECONDS, MallocTrimmer
from stream.policy.bus import (
    POLICY_LOADED_AT,
    POLICY_VERSION,
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
                  "Experiences not trained on, by reason (width: context.features not the policy's width).", ["reason"])
UPDATE_SECONDS = Histogram("recsys_learner_update_seconds", "Time of one optimiser step (batch building included).",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
FRESH_DELAY = Histogram("recsys_learner_fresh_delay_seconds",
                        "From the learner reading an experience to the update that first trained on it.",
                        buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30, 60))
EVENT_TO_UPDATE = Histogram("recsys_learner_event_to_update_seconds",
                            "From an experience's event time (a click, a closed window) to the update that first "
                            "trained on it.", buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300))
CHECKPOINTS = Counter("recsys_learner_checkpoints_total", "Checkpoints written.")
REPEATS = Counter("recsys_learner_repeated_experiences_total",
                  "Experiences skipped because their event_id was already taken (at-least-once topic).")
PUBLISH_FAILURES = Counter("recsys_learner_publish_failures_total",
                           "Versions that passed the gate but could not be written to the policies topic.")


@dataclass(frozen=True)
class LearnerWorkerConfig:
    """How the worker runs the agent on a stream; what it learns and serves is ``AgentConfig``'s."""

    #: Fresh experiences before the first update (a handful is noise).
    min_fresh: int = 32
    publish_every_seconds: float = 10.0
    #: Requests (by request_id hash) kept out of training to validate candidates on.
    holdout_share: float = 0.1
    #: The newest held-out decisions the gate judges a candidate on.
    gate_decisions: int = 5_000
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


class LearnerWorker:
    def __init__(self, settings: Settings, encoder: TextEncoder, config: LearnerWorkerConfig | None = None,
                 agent_config: AgentConfig | None = None, model_config: PolicyConfig | None = None,
                 store_path: Path | None = None, checkpoint_path: Path | None = None) -> None:
        self.settings = settings
        self.config = config or LearnerWorkerConfig()
        model_config = model_config or PolicyConfig(text_dim=encoder.dim, user_features=settings.user_features)
        if model_config.text_dim != encoder.dim:
            raise ValueError(f"policy text_dim {model_config.text_dim} != encoder dim {encoder.dim}")
        self.agent = Agent(model_config, agent_config)
        self.learner = self.agent.learner
        self.catalogue = Catalogue(encoder, "learner")
        self.items = TopicFollower(settings, "items", self.catalogue.add, from_start=True, component="learner")
        self.batcher = ExperienceBatcher(model_config, self.catalogue)
        self.replay = ReplaySampler(store_path or default_store_path(settings))
        self.publisher = PolicyPublisher(settings, "learner")
        self.checkpoint_path = checkpoint_path or settings.data_dir / "learner" / \
            f"{settings.topic_prefix}{settings.policy_name}.ckpt"
        self.topic = topic_name(settings, "experiences")
        self.lag = LagReporter("learner", {self.topic: "experiences"})
        self.version = 0                    # the live version: what the next delta applies onto
        #: The highest number this learner has written, tried to write, or found written by a trusted writer:
        # the next version takes the one after it, so no number is claimed twice (readers keep the first).
        self.last_number = 0
        self.live: TwoTowerPolicy | None = None
        self.positions: dict[int, int] = {}
        # (read at, partition, offset, experience): read but not yet trained on.
        self.fresh: deque[tuple[float, int, int, schemas.Experience]] = deque()
        # Only the newest held-out full decisions: all the gate reads (kept compact: see ``_compact``).
        self.holdout: deque[schemas.Experience] = deque(maxlen=self.config.gate_decisions)
        self.probes = ForgettingProbes(ProbeConfig(period_seconds=self.config.probe_period_seconds,
                                                   keep=self.config.probe_sets))
        self.recent_batches: deque = deque(maxlen=4)
        self.seen = RecentIds(self.config.dedupe_window)
        self.task_rng = np.random.default_rng(0)
        self.trained_through = 0.0
        self.updates_since_publish = 0
        self.retained: deque[schemas.PolicyHeader] = deque()
        self.deltas_since_full = 0
        self.last_full_at = float("-inf")    # the first version after a start is always full
        self.stop_event = threading.Event()
        # Follows the policies topic for operator rollbacks (set from the subscriber's thread); its own
        # versions are passed over unloaded.
        self.policies = PolicySubscriber(settings, "learner", on_swap=self._on_policy,
                                         accept=lambda header: "rollback_of" in header.metrics)
        self._rollback: LivePolicy | None = None
        self._last_checkpoint = float("-inf")     # monotonic seconds; the first publish checkpoints

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        started = time.perf_counter()
        state = {
            "learner": self.learner.state_dict(snapshot=False),     # written out below, before any update
            "model_config": self.learner.model.config.to_dict(),
            "version": self.version,
            "live": self.live.state_dict() if self.live is not None else None,
            "live_config": self.live.config.to_dict() if self.live is not None else None,
            "positions": self._resume_positions(),
            "trained_through": self.trained_through,
            "holdout": [schemas.encode(e) for e in self.holdout],
            "probes": self.probes.state_dict(),
            "saved_at": time.time(),
        }
        checkpoint.save(self.checkpoint_path, state)
        CHECKPOINTS.inc()
        log.debug("checkpoint written in %.2fs", time.perf_counter() - started)

    def _resume_positions(self) -> dict[int, int]:
        """Where a restart reads from: past what was trained on, not past what was only read."""
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
        self.version = state["version"]
        if state["live"] is not None:
            # The live version as it is served (older checkpoints keep only its weights).
            served = state.get("live_config")
            self.live = TwoTowerPolicy(PolicyConfig.from_dict(served) if served else self.learner.model.config)
            self.live.load_state_dict(state["live"])
        self.positions = {int(p): o for p, o in state["positions"].items()}
        self.trained_through = state["trained_through"]
        decoder = schemas.decoder_for("experiences")
        self.holdout.extend(_compact(e) for e in map(decoder.decode, state["holdout"]) if is_full_decision(e))
        if "probes" in state:   # checkpoints written before probe sets existed have none
            self.probes.load_state_dict(state["probes"])
        log.info("resumed from %s: version %d, step %d, positions %s", self.checkpoint_path, self.version,
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

    def run(self, max_seconds: float | None = None) -> None:
        """Learn until ``stop()`` (or ``max_seconds``). With ``config.until_caught_up`` (a backfill): once
        every experience on the topic has been read and trained on, publish what was learned since the last
        version (the gate still judges it), checkpoint, commit and return."""
        until_caught_up = self.config.until_caught_up
        self.items.start()
        self.items.caught_up.wait(120)
        self.resume()
        self.policies.start()       # a rollback published while the learner was down is adopted below
        on_topic = read_versions(self.settings)
        newest = newest_verified(on_topic, trust_of(self.settings))
        claimants = one_per_number(on_topic, trust_of(self.settings))   # each number's first trusted writer
        if newest is not None:
            self.retained.extend(v.header for v in claimants if v.version <= newest.version)
        if newest is not None and newest.version > self.version:
            log.info("topic holds verified version %d beyond the checkpoint's %d: continuing after it",
                     newest.version, self.version)
            self.version = newest.version
        # Numbers past the newest that verifies (versions on a parent no reader holds) stay taken.
        self.last_number = max([self.version, *(v.version for v in claimants)])
        self._export_live_version()
        consumer = make_consumer(self.settings, "learner", f"{self.settings.topic_prefix}learner", **{
            "enable.auto.commit": False, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 50,
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
                if (until_caught_up and not self.fresh and last_read < READ_BATCH and now - last_end_check >= 0.25):
                    last_end_check = now
                    if self._read_to_end(consumer):
                        if self.updates_since_publish > 0:
                            self._publish_or_reject()
                        log.info("backfill trained on everything on the topic: v%d live after %d updates",
                                 self.version, self.learner.step)
                        break
                self.lag.maybe_report(consumer, now)
                ready = len(self.fresh) >= self.config.min_fresh or (self.fresh and now - last_update > 1.0)
                if ready and (self.learner.step > 0 or len(self.fresh) >= self.config.min_fresh):
                    self._update()
                    last_update = now
                due = (self.updates_since_publish >= self.agent.config.publish_every_updates
                       or (self.updates_since_publish > 0 and now - last_publish >= self.config.publish_every_seconds))
                if due:
                    self._publish_or_reject()
                    last_publish = now
                    self._checkpoint_if_due(consumer, now)
            self._checkpoint_and_commit(consumer)     # a graceful stop keeps what was learned since
        finally:
            stop_trimming.set()
            consumer.close()
            self.items.stopping.set()
            self.policies.stop()
            self.publisher.close()

    def stop(self) -> None:
        self.stop_event.set()

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
        if live.version > self.version or self.policies.caught_up:
            self._rollback = live

    def _adopt_rollback(self, live: LivePolicy) -> None:
        """An operator rolled back: train on from those weights and gate against them, or the next version
        would undo the rollback within one publish interval."""
        self.learner.model.load_state_dict(live.model.state_dict())
        self.learner.optimizer.state.clear()        # moments of the abandoned weights mean nothing now
        self.live = live.model
        self.last_number = max(self.last_number, self.version, live.version)
        self.version = live.version
        # Versions this learner wrote after the rollback's number chain onto a state no reader holds now:
        # a full snapshot next, above them, lets every reader move on without waiting out ``full_every``.
        self.last_full_at = float("-inf")
        self.updates_since_publish = 0
        if all(h.version != live.version for h in self.retained):     # retired in its turn, like our own
            self.retained = deque(sorted([*self.retained, live.header], key=lambda h: h.version))
        if self.recent_batches:
            self.learner.consolidate(list(self.recent_batches))   # anchor the regularisers on these weights
        self._export_live_version()
        log.warning("v%d is a rollback to v%d: training continues from its weights and candidates are gated "
                    "against it", live.version, int(live.header.metrics["rollback_of"]))

    def _export_live_version(self) -> None:
        """The version this learner last published (or found on the topic), as the scorers export theirs."""
        POLICY_VERSION.labels("learner").set(self.version)
        POLICY_LOADED_AT.labels("learner").set(time.time())

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
        while len(messages) == READ_BATCH and len(self.fresh) < self.agent.config.max_turn:
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
        """Route one experience to the held-out logs or to training, once: the topic is at-least-once
        (a restarted join re-emits with the same ids), and a repeat must not be trained on twice."""
        if self.seen.seen(event.event_id):
            REPEATS.inc()
            return False
        if not self.batcher.fits(event):
            REFUSED.labels("width").inc()      # the replay service dead-letters it with its reason
            return False
        if zlib.crc32(event.request_id.encode()) % 1000 < self.config.holdout_share * 1000:
            if is_full_decision(event):
                event = _compact(event)
                self.holdout.append(event)
            self.probes.offer(event, time.time())
        else:
            self.fresh.append((time.monotonic(), partition, offset, event))
        return True

    def _update(self) -> None:
        """What waits, in the updates the agent plans (a backlog in bigger steps, so the learner keeps up
        with the stream instead of falling further behind it)."""
        plan = self.agent.plan(len(self.fresh))
        taken = [self.fresh.popleft() for _ in range(sum(plan))]
        start = 0
        for size in plan:
            self._update_once(taken[start:start + size])
            start += size

    def _update_once(self, taken: list[tuple[float, int, int, schemas.Experience]]) -> None:
        started = time.perf_counter()
        fresh = [e for *_, e in taken]
        replayed = [e for e in self.replay.sample(self.agent.replay_count(len(fresh))) if self.batcher.fits(e)]
        batch = self.batcher.batch(fresh + replayed)
        tasks = self._tasks(fresh)
        replay_batch = self.batcher.batch(replayed) if replayed else None
        stats = self.agent.update(batch, replay_batch, tasks)
        self.recent_batches.append(batch)
        now, mono = time.time(), time.monotonic()
        for read_at, _, _, e in taken:
            FRESH_DELAY.observe(mono - read_at)
            EVENT_TO_UPDATE.observe(max(0.0, now - e.ts))
            if e.kind == "click":
                self.trained_through = max(self.trained_through, e.ts)
        UPDATES.inc()
        SAMPLES.labels("fresh").inc(len(fresh))
        SAMPLES.labels("replay").inc(len(replayed))
        if tasks is not None:
            SAMPLES.labels("task").inc(int(tasks.support_mask.sum() + tasks.query_mask.sum()))
        for part, value in stats.items():
            LOSS.labels(part).set(value)
        self.updates_since_publish += 1
        UPDATE_SECONDS.observe(time.perf_counter() - started)

    def _tasks(self, fresh: list[schemas.Experience]):
        """A few fresh outcomes as meta tasks, each with what the scorer knew of its user (the agent's
        ``history`` last outcomes before it, from the replay store)."""
        agent = self.agent.config
        outcomes = [e for e in fresh if e.kind != "purchase"]
        if not outcomes or not self.agent.variant.meta:
            return None
        picked = [outcomes[i] for i in self.task_rng.choice(len(outcomes), size=min(agent.tasks_per_update,
                                                                                      len(outcomes)), replace=False)]
        return self.batcher.tasks(picked, [self.replay.history_before(e.user_id, e.ts, agent.history) for e in picked])

    def _gate(self, candidate: TwoTowerPolicy) -> tuple[bool, dict[str, float]]:
        """(publish?, metrics): the agent's verdict on the newest held-out top-of-slate decisions."""
        decisions = list(self.holdout)     # full decisions; widths were checked at _accept
        verdict = self.agent.judge(candidate, self.live, self.batcher.batch(decisions) if decisions else None)
        GATE.labels(verdict.reason).inc()
        if verdict.reason in ("passed", "refused"):
            for label, value in (("candidate", verdict.candidate), ("live", verdict.live),
                                 ("diff_low", verdict.low), ("diff_high", verdict.high)):
                GATE_ESTIMATE.labels(label).set(value)
            return verdict.publish, verdict.metrics()
        return True, {"gate_decisions": float(verdict.decisions)}

    def _delta_due(self) -> bool:
        return (self.live is not None and self.deltas_since_full < self.config.full_every - 1
                and time.monotonic() - self.last_full_at < self.config.full_every_seconds)

    def _publish_or_reject(self) -> None:
        t0 = time.perf_counter()
        snapshot = self.agent.candidate()
        delta = self._delta_due()
        if delta:   # what readers will hold: the live state plus the rows that moved (models/delta.py)
            _, published = make_delta(cpu_state(self.live), cpu_state(snapshot))
            snapshot.load_state_dict(published)
        ok, metrics = self._gate(snapshot)
        t_gate = time.perf_counter() - t0
        self.updates_since_publish = 0
        if not ok:
            log.warning("candidate refused by the gate: DR %.4f vs live %.4f, difference in [%.4f, %.4f]; keeping v%d",
                        metrics["dr"], metrics["dr_live"], metrics["dr_diff_low"], metrics["dr_diff_high"],
                        self.version)
            return
        metrics.update(trained_through_ts=self.trained_through, step=float(self.learner.step),
                       samples=float(self.learner.samples))
        version = max(self.version, self.last_number) + 1
        self.last_number = version      # taken even if the publish fails: its chunks may have landed
        try:
            if delta:
                header = self.publisher.publish_delta(snapshot, cpu_state(self.live), version, self.version, metrics)
            else:
                header = self.publisher.publish(snapshot, version, parent=self.version or None, metrics=metrics)
        except Exception as exc:  # noqa: BLE001 - the broker may be away: keep learning, try again next time
            PUBLISH_FAILURES.inc()
            log.error("publishing v%d failed (%s); keeping v%d live and learning on", version, exc, self.version)
            return
        t_publish = time.perf_counter() - t0 - t_gate
        if delta:
            self.deltas_since_full += 1
        else:
            self.deltas_since_full, self.last_full_at = 0, time.monotonic()
        self.retained.append(header)
        self._retire_beyond_retention()
        self.version = version
        self.live = snapshot
        self._export_live_version()
        self.agent.consolidate(list(self.recent_batches))   # what this version knows is not to be forgotten
        t_consolidate = time.perf_counter() - t0 - t_gate - t_publish
        self.probes.rotate(time.time())
        forgetting = self.probes.score(self._probe_value)
        log.info("v%d: gate %.2fs on %d held-out decisions, publish %.2fs, consolidate %.2fs; %d fresh waiting, "
                 "trained through %.1fs ago%s", version, t_gate, len(self.holdout), t_publish, t_consolidate,
                 len(self.fresh), time.time() - self.trained_through,
                 "; forgetting by probe age " + ", ".join(f"{age}: {lost:.1%}" for age, lost in forgetting.items())
                 if forgetting else "")

    def _retire_beyond_retention(self) -> None:
        """Keep the last ``retain_versions``, and never a delta without the snapshot it builds on: the oldest
        version kept is always a full snapshot (so there may be more, until the next snapshot)."""
        excess = len(self.retained) - self.config.retain_versions
        if excess <= 0:
            return
        cut = max((i for i, h in enumerate(self.retained) if i <= excess and h.kind == "full"), default=0)
        for _ in range(cut):
            self.publisher.retire(self.retained.popleft())

    def _probe_value(self, decisions: list[schemas.Experience]) -> float:
        """The live version's DR reward per decision on a probe set (point estimate, as served)."""
        return estimate(self.live, self.batcher.batch(decisions), clip=10.0, n_boot=0)["dr"].value

