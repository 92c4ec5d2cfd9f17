"""The one learning agent: policy learner, exploration, replay mix, meta step and publish gate together.

Meta's Pearl composes an agent from a policy learner, an exploration module, a replay
buffer and a safety module; this is the same idea for one product. Everything that
decides *what is learned and served* lives here, with one set of defaults, so the
learner worker (``stream/learner/worker.py``), the scorer (through the exploration the
version carries, served by ``models.serving.ServingPolicy.decide``) and every ``ours*``
row of the benchmarks run the same agent. The callers only bring data: the worker from
Kafka and the replay store, the benchmarks from a simulator or a log file.

A turn of the agent: ``plan`` splits the fresh decisions waiting into updates;
each update mixes its fresh decisions with ``replay_count`` replayed ones and, as
meta-learning tasks, up to ``tasks_per_update`` fresh outcomes, each with its user's
last ``history`` outcomes before it (exactly what a scorer adapts on when it serves
that request; ``update``). Every ``publish_every_updates`` updates a
``candidate`` (a frozen copy carrying its resolved exploration) goes through ``judge``
against the live version; a published one is ``consolidate``d so the regularisers
protect what it knows.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch

from models.batch import Batch, TaskBatch
from models.changepoint import TUNED_HAZARD
from models.exploration import Exploration
from models.gate import GateConfig, Verdict, judge
from models.learner import Learner, LearnerConfig
from models.policy import PolicyConfig, TwoTowerPolicy


def default_learner() -> LearnerConfig:
    return LearnerConfig(ewc_strength=100.0, distill_strength=0.5)


@dataclass(frozen=True)
class AgentConfig:
    learner: LearnerConfig = field(default_factory=default_learner)
    #: How versions are served; squarecb's gamma is resolved per version from the rows trained on (replay included).
    exploration: Exploration = field(default_factory=Exploration)
    #: Fresh decisions per optimiser step (a backlog is taken in at most ``max_updates_per_turn`` steps
    #: of at most ``max_turn`` decisions in all; the rest waits for the next turn).
    update_size: int = 32
    max_updates_per_turn: int = 8
    max_turn: int = 2048
    #: Share of each update's rows drawn from the replay store once it holds data.
    replay_share: float = 0.5
    #: Fresh outcomes per update that are also meta tasks (support: the user's outcomes before it).
    tasks_per_update: int = 16
    #: The scorer adapts a user's fast weights from its last ``history`` outcomes.
    history: int = 20
    publish_every_updates: int = 50
    #: Published versions per anti-forgetting period: the regularisers are re-anchored every this many.
    consolidate_every: int = 1
    #: Published versions between retained copies of the user tower (``PolicyConfig.experts`` of them are kept).
    retain_every: int = 20
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if (self.update_size < 1 or self.max_updates_per_turn < 1 or self.max_turn < self.update_size
                or not 0 <= self.replay_share < 1 or self.consolidate_every < 1 or self.retain_every < 1):
            raise ValueError(f"invalid agent config {self}")


@dataclass(frozen=True)
class Variant:
    """An ablation of the agent: the benchmarks' ``ours_no_meta``, ``ours_no_anti_forgetting`` (no EWC or
    distillation; replay stays) and ``ours_online_only`` (fresh data alone: no replay either); or an
    extension: ``ours_retained`` (retained user towers mixed per user at serve time, ``models/retained.py``),
    ``ours_changepoint`` (the serving posterior weighs where each user's current tastes began,
    ``models/changepoint.py``)."""

    name: str = "ours"
    meta: bool = True
    anti_forgetting: bool = True
    replay: bool = True
    #: Retained user towers (``PolicyConfig.experts``); 0 keeps the model config's.
    experts: int = 0
    #: ``PolicyConfig.change_hazard`` (the serving posterior's changepoint detector); None keeps the model config's.
    change_hazard: float | None = None

    def apply(self, config: AgentConfig) -> AgentConfig:
        learner = config.learner
        if not self.meta:
            learner = replace(learner, meta_weight=0.0)
        if not self.anti_forgetting:
            learner = replace(learner, ewc_strength=0.0, distill_strength=0.0, l2_strength=0.0)
        return replace(config, learner=learner, replay_share=config.replay_share if self.replay else 0.0)


OURS = Variant()
OURS_NO_META = Variant("ours_no_meta", meta=False)
OURS_NO_ANTI_FORGETTING = Variant("ours_no_anti_forgetting", anti_forgetting=False)
OURS_ONLINE_ONLY = Variant("ours_online_only", anti_forgetting=False, replay=False)
OURS_RETAINED = Variant("ours_retained", experts=4)
OURS_CHANGEPOINT = Variant("ours_changepoint", change_hazard=TUNED_HAZARD)
VARIANTS = {v.name: v for v in (OURS, OURS_NO_META, OURS_NO_ANTI_FORGETTING, OURS_ONLINE_ONLY, OURS_RETAINED,
                                OURS_CHANGEPOINT)}


class Agent:
    def __init__(self, model_config: PolicyConfig | None = None, config: AgentConfig | None = None,
                 variant: Variant = OURS, seed: int | None = None) -> None:
        """``seed``: the initial weights' (torch's global generator is left as it was); None draws them from it."""
        self.variant = variant
        self.config = cfg = variant.apply(config or AgentConfig())
        model_config = model_config or PolicyConfig()
        model_config = replace(model_config, exploration=cfg.exploration, experts=variant.experts or model_config.experts)
        if variant.change_hazard is not None:
            model_config = replace(model_config, change_hazard=variant.change_hazard)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.learner = Learner(model_config, cfg.learner)
        #: Without the meta step the prior is never learned, so a user's outcomes are not used at serve time.
        self.adapts = variant.meta
        self.published = 0

    @property
    def model(self) -> TwoTowerPolicy:
        return self.learner.model

    # -- training -----------------------------------------------------------------------------------
    def plan(self, waiting: int, max_steps: int | None = None) -> list[int]:
        """Sizes of the updates that take fresh decisions in this turn (up to ``max_turn`` of the ``waiting``):
        steps of ``update_size``, or bigger ones when a backlog would need more than ``max_updates_per_turn``
        (or ``max_steps``, a caller's time budget)."""
        cfg = self.config
        waiting = min(waiting, cfg.max_turn)
        if waiting <= 0:
            return []
        most = cfg.max_updates_per_turn if max_steps is None else max(1, min(max_steps, cfg.max_updates_per_turn))
        steps = min(most, max(1, round(waiting / cfg.update_size)))
        size = math.ceil(waiting / steps)
        return [min(size, waiting - i * size) for i in range(steps) if waiting - i * size > 0]

    def replay_count(self, fresh: int) -> int:
        share = self.config.replay_share
        return int(round(fresh * share / (1.0 - share)))

    def update(self, batch: Batch, replay: Batch | None = None, tasks: TaskBatch | None = None) -> dict[str, float]:
        """One optimiser step on fresh decisions (``batch``, replayed rows included) and meta tasks;
        ``replay`` alone feeds the distillation penalty."""
        return self.learner.update(batch, tasks if self.variant.meta else None, replay)

    # -- publishing ---------------------------------------------------------------------------------
    def candidate(self) -> TwoTowerPolicy:
        """A frozen CPU copy of the model, carrying the exploration it is to be served (and judged) with."""
        snapshot = copy.deepcopy(self.learner.model).float().cpu().eval()
        snapshot.config = replace(snapshot.config, exploration=self.config.exploration.resolved(self.learner.samples))
        if not self.adapts:
            # No meta-learned prior: a prior so tight that a user's outcomes leave the fast weights at its mean.
            with_tight_prior(snapshot)
        return snapshot

    def judge(self, candidate: TwoTowerPolicy, live: TwoTowerPolicy | None, heldout: Batch | None) -> Verdict:
        return judge(candidate, live, heldout, self.config.gate)

    def consolidate(self, recent: list[Batch]) -> None:
        """A version was published: at the end of each anti-forgetting period, what it knows becomes
        what the regularisers protect."""
        self.published += 1
        if recent and self.published % self.config.consolidate_every == 0:
            self.learner.consolidate(recent)
        if self.model.retained is not None and self.published % self.config.retain_every == 0:
            self.model.retained.retain(self.model.user_mlp)


def with_tight_prior(model: TwoTowerPolicy, scale: float = 1e-4) -> None:
    """Pin the fast weights to their prior mean (serve-time adaptation off) without a second serving path."""
    with torch.no_grad():
        model.prior_tril.copy_(torch.diag(torch.full_like(model.delta0, math.log(scale))))
