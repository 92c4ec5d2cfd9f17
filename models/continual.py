"""Regularisation against forgetting, and a measure of forgetting itself.

Each regulariser is a plugin with one small protocol: ``penalty(model, replay, rows)``
adds to the loss of every update, ``consolidate(model, ...)`` marks the end of a
period (a published version), taking a snapshot of what must not be lost. ``rows``
names, per embedding table, the rows the update touches: the parameter penalties
hold only those rows of a table (and every dense weight), so a row moves only when
its user or item is in an update and a published delta carries recent rows only:

- ``OnlineEWC``: a decayed diagonal Fisher estimate weighs how far each parameter
  may move from its consolidated value (Schwarz et al., online EWC).
- ``Distillation``: the previous policy's scores on replayed contexts are targets,
  so behaviour on old traffic stays put even where parameters move.
- ``L2Anchor``: plain L2 towards the previous weights.

``ForgettingTracker`` re-scores probe sets from past periods for every version and
reports how far each has fallen from its best.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from models.batch import Batch
from models.policy import TwoTowerPolicy

#: Rows touched by an update, per embedding table (parameter name -> row indices).
Rows = dict[str, torch.Tensor]


class Regularizer(Protocol):
    def penalty(self, model: TwoTowerPolicy, replay: Batch | None, rows: Rows | None = None) -> torch.Tensor: ...

    def consolidate(self, model: TwoTowerPolicy, batches: Iterable[Batch],
                    loss_fn: Callable[[TwoTowerPolicy, Batch], torch.Tensor]) -> None: ...


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the parameter penalties hold: not the gate over retained towers, which is the memory itself and
    must move as fast as tastes do (``models/retained.py``)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("retained.")}


def _anchored(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], weight: dict[str, torch.Tensor] | None,
              rows: Rows | None) -> torch.Tensor:
    """sum weight * (p - anchor)^2 over every dense parameter and the ``rows`` of each table named there."""
    terms = []
    for n, p in params.items():
        a, w = anchor[n], weight[n] if weight is not None else None
        if rows is not None and n in rows:
            idx = rows[n]
            p, a, w = p[idx], a[idx], w[idx] if w is not None else None
        diff = (p - a) ** 2
        terms.append((diff * w).sum() if w is not None else diff.sum())
    return torch.stack(terms).sum()


class L2Anchor:
    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self, model: TwoTowerPolicy, replay: Batch | None = None, rows: Rows | None = None) -> torch.Tensor:
        if not self.anchor:
            return torch.zeros((), device=model.global_bias.device)
        return 0.5 * self.strength * _anchored(_params(model), self.anchor, None, rows)

    def consolidate(self, model: TwoTowerPolicy, batches: Iterable[Batch] = (), loss_fn=None) -> None:
        self.anchor = {n: p.detach().clone() for n, p in _params(model).items()}

    def state_dict(self) -> dict:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = state["anchor"]


class OnlineEWC:
    """penalty = strength/2 * sum F_i (theta_i - theta*_i)^2 with F decayed across periods."""

    def __init__(self, strength: float = 100.0, decay: float = 0.9) -> None:
        self.strength = strength
        self.decay = decay
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.periods = 0

    def penalty(self, model: TwoTowerPolicy, replay: Batch | None = None, rows: Rows | None = None) -> torch.Tensor:
        if not self.fisher:
            return torch.zeros((), device=model.global_bias.device)
        return 0.5 * self.strength * _anchored(_params(model), self.anchor, self.fisher, rows)

    def consolidate(self, model: TwoTowerPolicy, batches: Iterable[Batch],
                    loss_fn: Callable[[TwoTowerPolicy, Batch], torch.Tensor]) -> None:
        """Estimate the diagonal Fisher from squared gradients on ``batches`` and fold it in."""
        params = _params(model)
        fresh = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fresh[n] += p.grad.detach() ** 2
            count += 1
        model.zero_grad(set_to_none=True)
        if count == 0:
            return
        for n in fresh:
            fresh[n] /= count
            self.fisher[n] = self.decay * self.fisher[n] + fresh[n] if n in self.fisher else fresh[n]
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        self.periods += 1

    def state_dict(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor, "periods": self.periods}

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.anchor, self.periods = state["fisher"], state["anchor"], state["periods"]


class Distillation:
    """Squared difference between current and previous-policy scores on replayed decisions."""

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength
        self.teacher: TwoTowerPolicy | None = None

    def penalty(self, model: TwoTowerPolicy, replay: Batch | None, rows: Rows | None = None) -> torch.Tensor:
        if self.teacher is None or replay is None:
            return torch.zeros((), device=model.global_bias.device)
        args = (replay.features, replay.user_bucket, replay.history, replay.item_bucket,
                replay.item_text, replay.candidates)
        with torch.no_grad():
            target = self.teacher.score_candidates(*args)
        current = model.score_candidates(*args)
        mask = replay.candidate_mask.to(current.dtype)
        return self.strength * (((current - target) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)

    def consolidate(self, model: TwoTowerPolicy, batches: Iterable[Batch] = (), loss_fn=None) -> None:
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict() if self.teacher is not None else None}

    def load_state_dict(self, state: dict, model: TwoTowerPolicy | None = None) -> None:
        if state["teacher"] is None:
            self.teacher = None
            return
        if model is None:
            raise ValueError("restoring a distillation teacher needs the model to copy its architecture")
        self.teacher = copy.deepcopy(model).eval()
        self.teacher.load_state_dict(state["teacher"])
        for p in self.teacher.parameters():
            p.requires_grad_(False)


@dataclass
class ForgettingTracker:
    """Per probe set: the best value any version reached, and the latest."""

    best: dict[str, float] = field(default_factory=dict)
    latest: dict[str, float] = field(default_factory=dict)

    def record(self, probe: str, value: float) -> None:
        """The newest version's value on this probe set."""
        self.latest[probe] = value
        self.best[probe] = max(value, self.best.get(probe, value))

    def forgetting(self, probe: str) -> float:
        """Share of the best performance on this probe set that the latest version lost (>= 0)."""
        best = self.best[probe]
        if best <= 0:
            return 0.0
        return max(0.0, (best - self.latest[probe]) / best)

    def report(self) -> dict[str, float]:
        return {probe: self.forgetting(probe) for probe in self.best}
