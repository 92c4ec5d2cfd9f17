"""Meta-RL over users as tasks: learn fast weights that adapt to a user in a few steps.

Each user gets a small vector ``delta`` added to its user embedding. ``adapt`` runs
k gradient steps of the reward-model loss on the user's support experiences,
starting from the meta-learned ``delta0`` with meta-learned per-dimension step
sizes (Meta-SGD). Because the score is linear in ``delta`` the gradient is closed
form, so the same function is cheap enough to run per request in a scorer and is
differentiable for the outer update (full MAML, or first-order when asked).
"""

from __future__ import annotations

import numpy as np
import torch

from models.batch import TaskBatch
from models.policy import TwoTowerPolicy


def adapt(
    delta0: torch.Tensor,
    lr: torch.Tensor,
    items: torch.Tensor,
    base: torch.Tensor,
    reward: torch.Tensor,
    steps: int,
    mask: torch.Tensor | None = None,
    first_order: bool = False,
) -> torch.Tensor:
    """Fast weights after ``steps`` of gradient descent on the squared error of the support set.

    delta0 (f,) or (T, f); lr (f,); items (T, S, f) the support items' fast features
    (``TwoTowerPolicy.fast_features``); base (T, S) scores without fast weights;
    reward (T, S); mask (T, S) marks real experiences. Returns (T, f). Also accepts a
    single task with shapes (S, f), (S,), (S,).
    """
    single = items.dim() == 2
    if single:
        items, base, reward = items.unsqueeze(0), base.unsqueeze(0), reward.unsqueeze(0)
        mask = mask.unsqueeze(0) if mask is not None else None
    weight = mask.to(items.dtype) if mask is not None else torch.ones_like(base)
    count = weight.sum(dim=1, keepdim=True).clamp(min=1.0)
    delta = delta0.expand(items.shape[0], -1) if delta0.dim() == 1 else delta0
    for _ in range(steps):
        error = (base + torch.einsum("tsd,td->ts", items, delta) - reward) * weight
        grad = 2.0 * torch.einsum("ts,tsd->td", error, items) / count
        if first_order:
            grad = grad.detach()
        delta = delta - lr * grad
    return delta[0] if single else delta


def meta_loss(
    model: TwoTowerPolicy, tasks: TaskBatch, steps: int, first_order: bool = False
) -> tuple[torch.Tensor, dict[str, float]]:
    """Query-set loss after adapting each task on its support set (the MAML outer objective).

    Tasks are played as cold-start users (no user-id embedding): adaptation must learn
    to recover what the global model cannot know about a new user, not to mop up the
    noise left over for users it has already memorised. Also reports the query loss
    before adaptation, so the gain from adapting is visible.
    """
    user = model.user_vectors(tasks.features, tasks.user_bucket, tasks.history, cold=True)   # (T, d)
    vectors, bias = model.item_vectors(tasks.item_bucket, tasks.item_text)       # (M, d), (M,)
    pos = model.position_bias.weight.squeeze(-1)

    def side(item, position):
        z = vectors[item]                                              # (T, n, d)
        base = torch.einsum("td,tnd->tn", user, z) + bias[item] + pos[position]
        return model.fast_features(z), base

    zs, base_s = side(tasks.support_item, tasks.support_position)
    zq, base_q = side(tasks.query_item, tasks.query_position)
    lr = model.inner_log_lr.exp()
    delta = adapt(model.delta0, lr, zs, base_s, tasks.support_reward, steps, tasks.support_mask, first_order)
    qmask = tasks.query_mask.to(base_q.dtype)
    count = qmask.sum().clamp(min=1.0)
    adapted = base_q + torch.einsum("tnf,tf->tn", zq, delta)
    loss = (((adapted - tasks.query_reward) ** 2) * qmask).sum() / count
    with torch.no_grad():
        before = base_q + torch.einsum("tnf,f->tn", zq, model.delta0)
        unadapted = (((before - tasks.query_reward) ** 2) * qmask).sum() / count
    return loss, {"meta_query_loss": float(loss.detach()), "meta_unadapted_loss": float(unadapted)}


@torch.no_grad()
def adapt_user(
    model: TwoTowerPolicy,
    user: torch.Tensor,
    item_vectors: torch.Tensor,
    item_bias: torch.Tensor,
    positions: torch.Tensor,
    rewards: torch.Tensor,
    steps: int = 3,
) -> torch.Tensor:
    """Serve-time adaptation of one user from its recent experiences; returns delta (d,).

    user (d,) from the user tower; item_vectors (S, d) and item_bias (S,) of the items
    the user was shown; positions (S,) and rewards (S,) of those experiences.
    Returns delta (fast_dim + 1,) for ``TwoTowerPolicy.personal_scores``.
    """
    if rewards.numel() == 0:
        return model.delta0.detach().clone()
    base = item_vectors @ user + item_bias + model.position_bias.weight[positions, 0]
    return adapt(model.delta0, model.inner_log_lr.exp(), model.fast_features(item_vectors), base, rewards, steps)


class ServeAdapter:
    """``adapt_user`` in numpy for the scorer's hot path: same maths, no autograd or torch dispatch.

    Built once per policy version (it copies the few meta parameters it needs), then
    called per request; a few microseconds per numpy op instead of torch's per-op cost.
    """

    def __init__(self, model: TwoTowerPolicy) -> None:
        self.proj = model.fast_proj.weight.detach().float().cpu().numpy()          # (F, d)
        self.delta0 = model.delta0.detach().float().cpu().numpy()                   # (F + 1,)
        self.lr = model.inner_log_lr.detach().exp().float().cpu().numpy()           # (F + 1,)
        self.position_bias = model.position_bias.weight.detach()[:, 0].float().cpu().numpy()

    def fast_features(self, item_vectors: np.ndarray) -> np.ndarray:
        view = item_vectors @ self.proj.T
        return np.concatenate([view, np.ones((len(view), 1), dtype=view.dtype)], axis=1)

    def adapt(self, user: np.ndarray, item_vectors: np.ndarray, item_bias: np.ndarray,
              positions: np.ndarray, rewards: np.ndarray, steps: int = 3) -> np.ndarray:
        if len(rewards) == 0:
            return self.delta0.copy()
        feats = self.fast_features(item_vectors)
        base = item_vectors @ user + item_bias + self.position_bias[positions]
        scale = 2.0 / len(rewards)
        delta = self.delta0.copy()
        for _ in range(steps):
            delta -= self.lr * (scale * ((base + feats @ delta - rewards) @ feats))
        return delta
