"""One incremental update: off-policy objective + meta outer step + anti-forgetting penalties.

Device-agnostic: CUDA when present (bfloat16 autocast), CPU otherwise, same code.
The learner worker (``stream/learner/worker.py``) feeds it batches from the stream and the
replay buffer; this module knows nothing of where they came from. State for a
checkpoint (model, optimiser, regularisers, step) round-trips through
``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch

from models.batch import Batch, TaskBatch
from models.continual import Distillation, L2Anchor, OnlineEWC, Rows
from models.meta import meta_loss
from models.objectives import ObjectiveConfig, off_policy_loss, retained_gate_loss
from models.optim import LazyRowAdam
from models.policy import PolicyConfig, TwoTowerPolicy


@dataclass(frozen=True)
class LearnerConfig:
    lr: float = 3e-3
    #: Step size of the meta-parameters (the head's item view and its prior's mean and covariance). Small:
    #: a single fresh outcome per task is a noisy gradient, and 1e-2 drifted the prior on the tuning streams.
    meta_lr: float = 1e-3
    #: Step size of the gate over retained user towers (``models/retained.py``): it must turn to an old
    #: tower within the few hundred outcomes a returning segment gives before the current tower relearns it.
    gate_lr: float = 3e-3
    #: L2 on the hashed id embeddings, which otherwise memorise the users and items they saw.
    embedding_decay: float = 1e-4
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    meta_weight: float = 1.0
    #: Let the meta objective move the shared towers too (by default only the prior and the item view learn from it).
    meta_trains_towers: bool = False
    ewc_strength: float = 0.0
    ewc_decay: float = 0.9
    distill_strength: float = 0.0
    l2_strength: float = 0.0
    grad_clip: float = 5.0
    device: str = "auto"
    amp: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def touched_rows(batch: Batch, tasks: TaskBatch | None = None) -> Rows:
    """The rows of each embedding table an update reads (its decisions, replayed ones included, and the
    meta tasks when they train the towers): the only rows the regularisers hold."""
    users, items = [batch.user_bucket], [batch.item_bucket]
    if tasks is not None:
        users.append(tasks.user_bucket)
        items.append(tasks.item_bucket)
    item_rows = torch.unique(torch.cat(items))
    return {"user_id.weight": torch.unique(torch.cat(users)), "item_id.weight": item_rows,
            "item_bias.weight": item_rows}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Learner:
    def __init__(self, model_config: PolicyConfig | None = None, config: LearnerConfig | None = None,
                 model: TwoTowerPolicy | None = None) -> None:
        self.config = cfg = config or LearnerConfig()
        self.device = pick_device(cfg.device)
        self.model = (model or TwoTowerPolicy(model_config)).to(self.device)
        meta = [self.model.fast_proj.weight, self.model.delta0, self.model.prior_tril]
        embeddings = [self.model.item_id.weight, self.model.user_id.weight, self.model.item_bias.weight]
        gate = list(self.model.retained.gate.parameters()) if self.model.retained is not None else []
        taken = {id(p) for p in meta + embeddings + gate}
        dense = [p for p in self.model.parameters() if id(p) not in taken]
        # The tables' rows step only when an update touches them (LazyRowAdam): with Adam's momentum, and the
        # regularisers' pull on every row, each delta version carried thousands of idle users' rows.
        self.optimizer = LazyRowAdam([
            {"params": dense, "lr": cfg.lr},
            {"params": embeddings, "lr": cfg.lr, "lazy": True},
            {"params": meta, "lr": cfg.meta_lr},
            *([{"params": gate, "lr": cfg.gate_lr}] if gate else []),
        ])
        self.ewc = OnlineEWC(cfg.ewc_strength, cfg.ewc_decay) if cfg.ewc_strength > 0 else None
        self.distill = Distillation(cfg.distill_strength) if cfg.distill_strength > 0 else None
        self.l2 = L2Anchor(cfg.l2_strength) if cfg.l2_strength > 0 else None
        self.step = 0
        self.samples = 0
        self.amp = cfg.amp and self.device.type == "cuda"

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def loss(self, batch: Batch, tasks: TaskBatch | None = None,
             replay: Batch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        with self._autocast():
            # The current tower learns at full speed; the gate over the retained towers learns apart.
            total, stats = off_policy_loss(self.model, batch, cfg.objective, mixed=False)
            if self.model.retained is not None:
                g_loss, g_stats = retained_gate_loss(self.model, batch)
                total = total + g_loss
                stats.update(g_stats)
            if tasks is not None and cfg.meta_weight > 0:
                m_loss, m_stats = meta_loss(self.model, tasks, cfg.meta_trains_towers)
                total = total + cfg.meta_weight * m_loss
                stats.update(m_stats)
            if cfg.embedding_decay > 0:
                used_items = self.model.item_id(batch.item_bucket)
                used_users = self.model.user_id(batch.user_bucket)
                decay = (used_items ** 2).sum(-1).mean() + (used_users ** 2).sum(-1).mean()
                total = total + cfg.embedding_decay * decay
            rows = touched_rows(batch, tasks if cfg.meta_trains_towers else None)
            for name, reg in (("ewc", self.ewc), ("distill", self.distill), ("l2", self.l2)):
                if reg is not None:
                    penalty = reg.penalty(self.model, replay, rows)
                    total = total + penalty
                    stats[f"{name}_penalty"] = float(penalty.detach())
        stats["loss"] = float(total.detach())
        return total, stats

    def update(self, batch: Batch, tasks: TaskBatch | None = None, replay: Batch | None = None) -> dict[str, float]:
        """One optimiser step; returns the loss and its parts."""
        self.model.train()
        batch = batch.to(self.device, non_blocking=True)
        tasks = tasks.to(self.device, non_blocking=True) if tasks is not None else None
        replay = replay.to(self.device, non_blocking=True) if replay is not None else None
        total, stats = self.loss(batch, tasks, replay)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.config.grad_clip:
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
        self.optimizer.step()
        self.step += 1
        self.samples += len(batch)
        return stats

    def consolidate(self, batches: list[Batch]) -> None:
        """End of a period (a published version): snapshot what must not be forgotten."""
        batches = [b.to(self.device) for b in batches]

        def rm_loss(model: TwoTowerPolicy, b: Batch) -> torch.Tensor:
            return off_policy_loss(model, b, ObjectiveConfig(kind="reward_model"), mixed=False)[0]

        for reg in (self.ewc, self.distill, self.l2):
            if reg is not None:
                reg.consolidate(self.model, batches, rm_loss)

    def state_dict(self, snapshot: bool = True) -> dict:
        """A snapshot (deep copy): later updates never alter a checkpoint already taken. ``snapshot=False``
        returns the live tensors, for a caller that serialises them before the next update (the worker's
        checkpoint: a copy of every table, moment and anchor was ~26 MB allocated and freed per publish)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ewc": self.ewc.state_dict() if self.ewc else None,
            "distill": self.distill.state_dict() if self.distill else None,
            "l2": self.l2.state_dict() if self.l2 else None,
            "step": self.step,
            "samples": self.samples,
        }
        return copy.deepcopy(state) if snapshot else state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ewc and state.get("ewc"):
            self.ewc.load_state_dict(state["ewc"])
        if self.distill and state.get("distill"):
            self.distill.load_state_dict(state["distill"], self.model)
        if self.l2 and state.get("l2"):
            self.l2.load_state_dict(state["l2"])
        self.step, self.samples = state["step"], state["samples"]


def throughput(learner: Learner, batch: Batch, tasks: TaskBatch | None, seconds: float = 5.0,
               warmup: int = 3) -> dict[str, float | str]:
    """Samples per second of ``update`` on this batch (decisions, plus task experiences if given), with the
    regularisers anchored on it first so their penalties are really computed."""
    learner.consolidate([batch])
    for _ in range(warmup):
        learner.update(batch, tasks)
    if learner.device.type == "cuda":
        torch.cuda.synchronize()
    steps = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        learner.update(batch, tasks)
        steps += 1
    if learner.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    per_step = len(batch) + (int(tasks.support_mask.sum() + tasks.query_mask.sum()) if tasks is not None else 0)
    return {"steps_per_second": steps / elapsed, "samples_per_second": steps * per_step / elapsed,
            "batch_size": len(batch), "device": learner.device.type}
