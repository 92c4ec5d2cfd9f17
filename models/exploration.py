"""How a policy turns its reward estimates into a distribution to draw a slate from.

Three rules, each giving exact probabilities (so every logged propensity is the true
one, which off-policy learning and evaluation rely on):

- ``softmax``: ``softmax(scores / temperature)``.
- ``squarecb``: inverse-gap weighting (Foster & Rakhlin 2020, VW's ``--squarecb``):
  a candidate ``gap`` below the best gets ``1 / (K + gamma * gap)``, the best gets the
  rest. ``gamma`` grows with what the model has been trained on
  (``gamma_scale * decisions ** gamma_exponent``), resolved once per published version.
- ``thompson``: posterior sampling with ``draws`` samples of the user's head (see
  ``models/meta.py``); an item's probability is the share of samples in which it
  ranks first. Conditional on the samples this is exact, and the samples do not
  depend on the rewards, so importance weights built on it stay unbiased.

Every rule can be mixed with an ``epsilon`` uniform floor (thompson must be, so no
candidate's propensity is zero; squarecb's never is). The settings travel inside each policy version (``PolicyConfig.exploration``):
the publish gate, the forgetting probes, the scorer and the benchmark judge and serve
the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

import numpy as np
import torch

Kind = Literal["softmax", "squarecb", "thompson"]
KINDS: tuple[str, ...] = ("softmax", "squarecb", "thompson")


@dataclass(frozen=True)
class Exploration:
    kind: Kind = "squarecb"
    #: Uniform share mixed into every rule. squarecb already gives every candidate a positive
    #: probability; thompson needs it (a candidate no sample ranks first would get none).
    epsilon: float = 0.0
    #: softmax: scores are expected rewards (a click is worth 1).
    temperature: float = 0.1
    #: squarecb: gamma = gamma_scale * decisions ** gamma_exponent, fixed per version (``resolved``);
    #: 30 was chosen on the tuning streams (10 and 100 did worse; BENCHMARKS.md).
    gamma_scale: float = 30.0
    gamma_exponent: float = 0.5
    #: squarecb: the resolved gamma of a version; 0 until ``resolved`` sets it.
    gamma: float = 0.0
    #: thompson: posterior samples per request.
    draws: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"exploration kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError("exploration epsilon must be in [0, 1]")
        if not self.temperature > 0:
            raise ValueError("exploration temperature must be > 0")
        if self.gamma_scale < 0 or self.gamma < 0 or not math.isfinite(self.gamma):
            raise ValueError("exploration gamma must be finite and >= 0")
        if not 1 <= self.draws <= 1024:
            raise ValueError("exploration draws must be in 1..1024")
        if self.kind == "thompson" and self.epsilon <= 0:
            raise ValueError("thompson exploration needs epsilon > 0 (a candidate no draw ranks first would "
                             "otherwise have propensity 0)")

    def resolved(self, decisions: int) -> Exploration:
        """This rule as a version trained on ``decisions`` serves it (squarecb's gamma fixed)."""
        if self.kind != "squarecb":
            return self
        return replace(self, gamma=self.gamma_scale * max(1, decisions) ** self.gamma_exponent)

    def with_overrides(self, **overrides) -> Exploration:
        """A copy with the non-None overrides (an operator's ``score --temperature`` and the like)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Exploration:
        return cls(**only_known_fields(cls, data, "exploration keys"))

    def describe(self) -> str:
        if self.kind == "softmax":
            rule = f"softmax T={self.temperature:g}"
        elif self.kind == "squarecb":
            rule = f"squarecb gamma={self.gamma:.4g}" if self.gamma else \
                f"squarecb gamma={self.gamma_scale:g}*n^{self.gamma_exponent:g}"
        else:
            rule = f"thompson {self.draws} draws"
        return f"{rule}, epsilon {self.epsilon:g}"


def only_known_fields(cls, data: dict, what: str) -> dict:
    """``data`` if every key is a field of the dataclass ``cls``; a config from a newer or foreign writer
    is refused by name rather than half-read."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}")
    return data


def probabilities(scores: np.ndarray, rule: Exploration, samples: np.ndarray | None = None) -> np.ndarray:
    """(n,) distribution over one request's candidates. ``samples`` (draws, n): posterior score samples,
    needed by thompson (without them thompson ranks by ``scores`` alone)."""
    n = len(scores)
    if rule.kind == "softmax":
        logits = (scores - scores.max()) / rule.temperature
        base = np.exp(logits)
        base /= base.sum()
    elif rule.kind == "squarecb":
        best = int(np.argmax(scores))
        base = 1.0 / (n + rule.gamma * (scores[best] - scores))
        base[best] = 0.0
        base[best] = max(0.0, 1.0 - base.sum())
    else:
        draws = samples if samples is not None else scores[None, :]
        base = np.bincount(draws.argmax(axis=1), minlength=n) / len(draws)
    return (1.0 - rule.epsilon) * base + rule.epsilon / n


def target_probabilities(scores: torch.Tensor, rule: Exploration, mask: torch.Tensor | None = None,
                         samples: torch.Tensor | None = None) -> torch.Tensor:
    """``probabilities`` for a batch: scores (B, K), mask (B, K) marks real candidates, samples (B, M, K)."""
    valid = mask if mask is not None else torch.ones_like(scores, dtype=torch.bool)
    count = valid.sum(dim=-1, keepdim=True).clamp(min=1).to(scores.dtype)
    floor = valid.to(scores.dtype) / count
    low = torch.finfo(scores.dtype).min
    if rule.kind == "softmax":
        base = torch.softmax((scores / rule.temperature).masked_fill(~valid, float("-inf")), dim=-1)
    elif rule.kind == "squarecb":
        masked = scores.masked_fill(~valid, low)
        best = masked.argmax(dim=-1, keepdim=True)
        gap = (masked.gather(-1, best) - scores).clamp(min=0.0)
        base = (1.0 / (count + rule.gamma * gap)).masked_fill(~valid, 0.0)
        base = base.scatter(-1, best, 0.0)
        base = base.scatter(-1, best, (1.0 - base.sum(dim=-1, keepdim=True)).clamp(min=0.0))
    else:
        draws = samples if samples is not None else scores[:, None, :]
        top = draws.masked_fill(~valid[:, None, :], low).argmax(dim=-1)                # (B, M)
        base = torch.zeros_like(scores).scatter_add(-1, top, torch.ones_like(top, dtype=scores.dtype))
        base = base / draws.shape[1]
    return (1.0 - rule.epsilon) * base + rule.epsilon * floor
