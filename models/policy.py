"""The two-tower policy: what a user is likely to reward, and how a slate is drawn from it.

Item tower: a hashed item-id embedding plus a projection of the item's frozen text
embedding, so a new item is scored from its words alone. User tower: observable
features, a hashed user-id embedding and the mean text of the user's recent clicks.
The score of an item is an estimate of its reward if shown at the top; per-user
fast weights (``delta``, see ``models/meta.py``) shift the user vector at serve time.

Slates are drawn by Plackett-Luce over an exploration distribution
(``models/exploration.py``, carried in ``PolicyConfig.exploration``). The propensity logged for each shown
item is sequential: the probability of picking it at its position given the items
above it, which is exact and what off-policy learning needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from models.exploration import Exploration, only_known_fields
from models.retained import RetainedTowers

#: PolicyConfig fields that say how one version is served, not the model's shape: they change per version.
PER_VERSION = ("exploration",)


@dataclass(frozen=True)
class PolicyConfig:
    user_features: int = 16
    text_dim: int = 384
    dim: int = 32
    hidden: int = 64
    item_buckets: int = 1 << 14
    user_buckets: int = 1 << 14
    max_positions: int = 100
    #: Size of the per-user head's item view; equal to ``dim`` it starts as an offset of the user vector
    #: itself (8 did worse on the tuning streams, BENCHMARKS.md).
    fast_dim: int = 32
    #: Prior standard deviation of each fast weight before meta-learning tunes the prior (0.3 and 0.1 did
    #: worse on the tuning streams: too tight a prior leaves a user's outcomes unused).
    prior_scale: float = 1.0
    #: Standard deviation of a reward around its expectation (a click is worth 1): how much one outcome says.
    noise: float = 1.0
    #: How far a user's recent outcomes move the *estimate* of a reward (``ServingPolicy.estimates``), as a
    #: pseudo-count: n outcomes move it n / (n + this) of the way to the posterior mean. Choices keep the
    #: whole move (reward on the tuning streams wanted it); pooled AUC on MovieLens's first half wanted the
    #: estimate held back (0 gave new users 0.6165, 5 0.6501, 10 0.6578, 20 0.6596; BENCHMARKS.md).
    estimate_pseudo_count: float = 10.0
    #: Chance per outcome that a user's tastes change (``models/changepoint.py``): the serving posterior then
    #: weighs where in the user's recent outcomes their current regime began (0: every recent outcome counts).
    change_hazard: float = 0.0
    #: Retained copies of the user tower a learned gate mixes per user at serve time (``models/retained.py``):
    #: a memory of past tastes the serving path uses (0: none).
    experts: int = 0
    #: How a version is served (and so judged): travels with every version.
    exploration: Exploration = field(default_factory=Exploration)

    def __post_init__(self) -> None:
        if isinstance(self.exploration, dict):     # from JSON (a version header, a checkpoint)
            object.__setattr__(self, "exploration", Exploration.from_dict(self.exploration))
        if (self.user_features < 0 or self.fast_dim < 1 or self.prior_scale <= 0 or self.noise <= 0
                or not self.estimate_pseudo_count >= 0 or self.experts < 0 or not 0 <= self.change_hazard < 1):
            raise ValueError(f"invalid policy config {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        return cls(**only_known_fields(cls, data, "policy config keys"))


class TwoTowerPolicy(nn.Module):
    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PolicyConfig()
        self.item_id = nn.Embedding(cfg.item_buckets, cfg.dim)
        self.item_bias = nn.Embedding(cfg.item_buckets, 1)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        self.user_id = nn.Embedding(cfg.user_buckets, cfg.dim)
        self.history_proj = nn.Linear(cfg.text_dim, cfg.dim, bias=False)
        self.user_mlp = nn.Sequential(
            nn.Linear(cfg.user_features + 2 * cfg.dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.dim))
        self.position_bias = nn.Embedding(cfg.max_positions, 1)
        self.retained = RetainedTowers(cfg.experts, cfg.user_features + 2 * cfg.dim, cfg.hidden, cfg.dim) \
            if cfg.experts else None
        self.global_bias = nn.Parameter(torch.zeros(()))
        # Per-user fast weights act on a learned view of the item vector (fast_proj),
        # plus one per-user score offset that absorbs how much a user
        # clicks overall so the rest learns what they like. They have a Gaussian prior,
        # meta-learned: mean delta0 and covariance L L^T with L = prior_tril's lower
        # triangle and exp of its diagonal (see models/meta.py).
        self.fast_proj = nn.Linear(cfg.dim, cfg.fast_dim, bias=False)
        if cfg.fast_dim == cfg.dim:     # the head starts as an offset of the user vector itself
            nn.init.eye_(self.fast_proj.weight)
        self.delta0 = nn.Parameter(torch.zeros(cfg.fast_dim + 1))
        self.prior_tril = nn.Parameter(torch.diag(torch.full((cfg.fast_dim + 1,), math.log(cfg.prior_scale))))
        nn.init.normal_(self.item_id.weight, std=0.01)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.normal_(self.user_id.weight, std=0.01)
        nn.init.zeros_(self.position_bias.weight)

    def tower_input(self, features: torch.Tensor, user_bucket: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, self.user_id(user_bucket), self.history_proj(history)], dim=-1)

    def user_vectors(self, features: torch.Tensor, user_bucket: torch.Tensor, history: torch.Tensor,
                     mixed: bool = True) -> torch.Tensor:
        """(B, dim): as served (the current tower mixed with the retained ones), or the current tower alone
        (``mixed=False``: what the main objective trains)."""
        x = self.tower_input(features, user_bucket, history)
        current = self.user_mlp(x)
        return self.retained.mix(x, current) if mixed and self.retained is not None else current

    def item_vectors(self, item_bucket: torch.Tensor, item_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, dim) item vectors and (N,) biases."""
        vectors = self.item_id(item_bucket) + self.text_proj(item_text)
        return vectors, self.item_bias(item_bucket).squeeze(-1) + self.global_bias

    @staticmethod
    def scores(user: torch.Tensor, items: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(B, K) estimated reward at the top position; user (B, d), items (B, K, d), bias (B, K)."""
        return torch.einsum("bd,bkd->bk", user, items) + bias

    def score_candidates(
        self,
        features: torch.Tensor,
        user_bucket: torch.Tensor,
        history: torch.Tensor,
        item_bucket: torch.Tensor,
        item_text: torch.Tensor,
        candidates: torch.Tensor,
        delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, K) scores of each user's candidates (rows of item_*), with optional fast weights."""
        user = self.user_vectors(features, user_bucket, history)
        vectors, bias = self.item_vectors(item_bucket, item_text)
        return self.personal_scores(user, vectors[candidates], bias[candidates], delta)

    def fast_features(self, items: torch.Tensor) -> torch.Tensor:
        """What the fast weights multiply: (..., fast_dim) item view plus a constant 1."""
        view = self.fast_proj(items)
        return torch.cat([view, torch.ones_like(view[..., :1])], dim=-1)

    def prior_scale_tril(self) -> torch.Tensor:
        """L with the fast weights' prior covariance L L^T (positive diagonal)."""
        raw = self.prior_tril
        return torch.tril(raw, -1) + torch.diag(raw.diagonal().clamp(-9.0, 3.0).exp())

    def personal_scores(self, user: torch.Tensor, items: torch.Tensor, bias: torch.Tensor,
                        delta: torch.Tensor | None) -> torch.Tensor:
        """``scores`` plus the fast-weight term; delta is (B, fast_dim + 1) or (fast_dim + 1,)."""
        scores = self.scores(user, items, bias)
        if delta is None:
            return scores
        delta = delta if delta.dim() == 2 else delta.expand(items.shape[0], -1)
        return scores + torch.einsum("bkf,bf->bk", self.fast_features(items), delta)


def sample_slates(
    probs: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plackett-Luce draw of k distinct items per row, with their sequential propensities.

    Gumbel-top-k gives an exact PL sample in one pass; the propensity of the item at
    position p is ``probs[item] / (1 - sum of probs of the items above it)``.
    """
    if k > probs.shape[-1]:
        raise ValueError(f"slate size {k} exceeds {probs.shape[-1]} candidates")
    uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    keys = torch.log(probs.double()) + gumbel
    slates = keys.topk(k, dim=-1).indices
    return slates, sequential_propensities(probs, slates)


def sequential_propensities(probs: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
    chosen = probs.double().gather(-1, slates)
    taken_before = torch.cumsum(chosen, dim=-1) - chosen
    return (chosen / (1.0 - taken_before).clamp_min(1e-12)).clamp(max=1.0).to(probs.dtype)


def greedy_slates(scores: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic top-k; every propensity is 1."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    slates = scores.topk(k, dim=-1).indices
    return slates, torch.ones(slates.shape, dtype=scores.dtype, device=scores.device)
