"""The continual-learning loop: what a turn of training does, whoever brings the data.

The learner worker feeds it experiences read from Kafka; the benchmarks feed it a
simulator's rounds or a log file's periods. Everything between those records and a
published version happens here, once, so a benchmark measures the loop that ships:

- the hold-out split, by a hash of each record's request: which requests judge the
  candidates is the data's choice, not the order things arrived in;
- the update plan (``Agent.plan``), the replay mix, the meta tasks, the update;
- the candidate as readers will hold it: the live version plus the rows that moved
  (``models/delta.py``), so what is gated is what is served;
- the gate on the held-out decisions met so far, and the consolidation after a publish.

What differs between callers comes through three small protocols: ``Experiences``
(how the caller's records become tensors, each user's outcomes before a record
included), ``Replay`` (rows from the past) and ``Sink`` (where a version goes).

Turns are set by the data: a turn trains on the next ``max_turn`` trainable records
(fewer when fewer wait) and a version is due every ``publish_every_updates`` updates.
A caller may publish sooner (the streaming worker does every second or few) and cap a
turn's steps (its pace, so a version is not held back): the only places wall time can
enter. ``learn_backlog`` lets it in at neither, so the same records and seed give the
same versions through the worker's backfill and through a benchmark.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from models.agent import Agent
from models.batch import Batch, TaskBatch
from models.delta import State, cpu_state, make_delta
from models.gate import Verdict
from models.policy import TwoTowerPolicy

E = TypeVar("E")
E_in = TypeVar("E_in", contravariant=True)
E_out = TypeVar("E_out", covariant=True)


class Experiences(Protocol[E_in]):
    """How a caller's records become what the agent learns from."""

    def request_key(self, e: E_in) -> bytes:
        """What the hold-out split hashes: every record of one request falls on the same side."""
        ...

    def is_decision(self, e: E_in) -> bool:
        """Whether the gate can judge a policy on it (a top-of-slate choice that names its candidates)."""
        ...

    def is_outcome(self, e: E_in) -> bool:
        """Whether it may be a meta task's query (a purchase follow-up is not a served outcome)."""
        ...

    def batch(self, experiences: Sequence[E_in]) -> Batch: ...

    def tasks(self, queries: Sequence[E_in]) -> TaskBatch | None:
        """Each query with its user's outcomes before it as support (what a scorer adapted on)."""
        ...


class Replay(Protocol[E_out]):
    def sample(self, n: int) -> Sequence[E_out]:
        """Up to ``n`` records from the past, drawn as the replay store draws them."""
        ...


class Sink(Protocol):
    def publish(self, version: TwoTowerPolicy, live: TwoTowerPolicy | None, metrics: dict[str, float],
                changes: State | None = None) -> bool:
        """Make ``version`` the served one (``live``: its parent, what readers hold now; ``changes``: what moved
        since ``live``, ``make_delta``'s delta, so a sink that writes deltas need not compute it again); False
        when it could not be published (the loop keeps the live version and learns on)."""
        ...


class NoReplay:
    def sample(self, n: int) -> list:
        return []


@dataclass(frozen=True)
class LoopConfig:
    #: Requests (by hash) kept out of training to validate candidates on.
    holdout_share: float = 0.1
    #: The newest held-out decisions the gate judges a candidate on.
    gate_decisions: int = 5_000
    #: Batches a consolidation anchors the regularisers on (the last updates before a publish).
    recent_batches: int = 4
    #: Seeds the choice of meta tasks (the initial weights are the agent's: ``Agent(seed=)``).
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.holdout_share < 1 or self.gate_decisions < 1 or self.recent_batches < 1:
            raise ValueError(f"invalid loop config {self}")


@dataclass(frozen=True)
class Update:
    fresh: int
    replayed: int
    task_samples: int
    stats: dict[str, float]
    seconds: float
    #: When it finished (``time.monotonic()``): what freshness is measured to.
    finished: float


@dataclass(frozen=True)
class Turn(Generic[E]):
    #: Records taken from the front of what waited: trained on or held out.
    consumed: int
    trained: list[E]
    held: list[E]
    updates: list[Update]


@dataclass(frozen=True)
class Publication:
    verdict: Verdict
    #: Passed the gate and the sink took it.
    published: bool
    metrics: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)


class ContinualLoop(Generic[E]):
    def __init__(self, agent: Agent, experiences: Experiences[E], sink: Sink, replay: Replay[E] | None = None,
                 config: LoopConfig | None = None) -> None:
        self.agent = agent
        self.experiences = experiences
        self.sink = sink
        self.replay: Replay[E] = replay if replay is not None else NoReplay()
        self.config = cfg = config or LoopConfig()
        self.rng = np.random.default_rng(cfg.seed)
        #: Only the newest held-out decisions: all the gate reads.
        self.holdout: deque[E] = deque(maxlen=cfg.gate_decisions)
        self.recent: deque[Batch] = deque(maxlen=cfg.recent_batches)
        #: The published version: what the gate compares against and a delta applies onto.
        self.live: TwoTowerPolicy | None = None
        self.updates_since_publish = 0

    # -- training -----------------------------------------------------------------------------------
    def trains_on(self, e: E) -> bool:
        """False for a held-out record (its request's hash falls in ``holdout_share``)."""
        return zlib.crc32(self.experiences.request_key(e)) % 1000 >= self.config.holdout_share * 1000

    @property
    def publish_due(self) -> bool:
        return self.updates_since_publish >= self.agent.config.publish_every_updates

    def turn(self, waiting: Iterable[E], max_updates: int | None = None) -> Turn[E]:
        """Train on the next trainable records of ``waiting`` (at most ``max_turn``); the held-out ones met on
        the way join the gate's logs. The caller drops ``consumed`` records from the front of its queue.
        ``max_updates`` caps the optimiser steps (the records then go in bigger ones): a streaming caller's
        time budget; None, the plan the records alone decide."""
        trained: list[E] = []
        held: list[E] = []
        consumed, limit = 0, self.agent.config.max_turn
        for e in waiting:
            if len(trained) >= limit:
                break
            consumed += 1
            if self.trains_on(e):
                trained.append(e)
            else:
                held.append(e)
                if self.experiences.is_decision(e):
                    self.holdout.append(e)
        updates, start = [], 0
        for size in self.agent.plan(len(trained), max_updates):
            updates.append(self._update(trained[start:start + size]))
            start += size
        return Turn(consumed, trained, held, updates)

    def _update(self, fresh: list[E]) -> Update:
        started = time.perf_counter()
        wanted = self.agent.replay_count(len(fresh))
        replayed = list(self.replay.sample(wanted)) if wanted > 0 else []
        batch = self.experiences.batch(fresh + replayed)
        tasks = self._tasks(fresh)
        stats = self.agent.update(batch, self.experiences.batch(replayed) if replayed else None, tasks)
        self.recent.append(batch)
        self.updates_since_publish += 1
        task_samples = int(tasks.support_mask.sum() + tasks.query_mask.sum()) if tasks is not None else 0
        return Update(len(fresh), len(replayed), task_samples, stats, time.perf_counter() - started, time.monotonic())

    def _tasks(self, fresh: list[E]) -> TaskBatch | None:
        """Up to ``tasks_per_update`` of the update's outcomes as meta tasks, picked by the loop's seed."""
        if not self.agent.variant.meta:
            return None
        outcomes = [e for e in fresh if self.experiences.is_outcome(e)]
        if not outcomes:
            return None
        size = min(self.agent.config.tasks_per_update, len(outcomes))
        return self.experiences.tasks([outcomes[i] for i in self.rng.choice(len(outcomes), size=size, replace=False)])

    # -- publishing ---------------------------------------------------------------------------------
    def publish(self) -> Publication:
        """Candidate (as readers will hold it), gate, sink, consolidation."""
        started = time.perf_counter()
        candidate = self.agent.candidate()
        changes = None
        if self.live is not None:
            changes, published = make_delta(cpu_state(self.live), cpu_state(candidate))
            candidate.load_state_dict(published)
        decisions = list(self.holdout)
        verdict = self.agent.judge(candidate, self.live, self.experiences.batch(decisions) if decisions else None)
        self.updates_since_publish = 0
        metrics = verdict.metrics() if verdict.reason in ("passed", "refused") else \
            {"gate_decisions": float(verdict.decisions)}
        gated = time.perf_counter()
        seconds = {"gate": gated - started}
        if not verdict.publish:
            return Publication(verdict, False, metrics, seconds)
        learner = self.agent.learner
        metrics.update(step=float(learner.step), samples=float(learner.samples))
        if not self.sink.publish(candidate, self.live, metrics, changes):
            return Publication(verdict, False, metrics, seconds)
        sent = time.perf_counter()
        self.live = candidate
        self.agent.consolidate(list(self.recent))       # what this version knows is not to be forgotten
        seconds.update(publish=sent - gated, consolidate=time.perf_counter() - sent)
        return Publication(verdict, True, metrics, seconds)

    def learn_backlog(self, records: Iterable[E]) -> list[Publication]:
        """Train on every record, in turns, a version whenever one is due and one at the end: what the learner
        worker does with a topic's backlog (``learn --until-caught-up``)."""
        waiting = deque(records)
        out = []
        while waiting:
            turn = self.turn(waiting)
            for _ in range(turn.consumed):
                waiting.popleft()
            if self.publish_due:
                out.append(self.publish())
        if self.updates_since_publish > 0:
            out.append(self.publish())
        return out

    def adopt(self, model: TwoTowerPolicy) -> None:
        """An operator rolled back to ``model``: train on from its weights and gate against it, or the next
        version would undo the rollback within one publish interval."""
        learner = self.agent.learner
        learner.model.load_state_dict(model.state_dict())
        learner.optimizer.state.clear()         # moments of the abandoned weights mean nothing now
        self.live = model
        self.updates_since_publish = 0
        if self.recent:
            learner.consolidate(list(self.recent))   # anchor the regularisers on these weights
