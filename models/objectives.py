"""Off-policy learning from logged bandit feedback.

Three objectives over a ``Batch`` of (context, candidates, shown action, behaviour
propensity, reward):

- ``reward_model``: squared error of the estimated reward of the shown item (the
  direct method; also the learned baseline of the other two).
- ``dr``: doubly robust policy gradient: the policy's expected reward under the
  reward model, plus a clipped importance-weighted correction
  ``w * (r - q(x, a)) * grad log pi(a|x)`` with ``w = min(pi / mu, clip)``.
- ``snips``: the same with self-normalised weights (divided by their batch mean),
  which trades a little bias for much less variance.

The logged propensity ``mu`` always enters the weight: learning never pretends the
logs came from the current policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from models.batch import Batch
from models.exploration import Exploration, target_probabilities
from models.policy import TwoTowerPolicy

Objective = Literal["reward_model", "dr", "snips"]


@dataclass(frozen=True)
class ObjectiveConfig:
    kind: Objective = "dr"
    temperature: float = 0.5
    epsilon: float = 0.05
    clip: float = 10.0
    #: Weight of the policy-gradient term relative to the reward-model loss. The policy
    #: is a softmax of the reward model's scores, so a large weight trades the reward
    #: model's calibration (which DM/DR validation relies on) for policy sharpness.
    pg_weight: float = 0.1


def off_policy_loss(
    model: TwoTowerPolicy, batch: Batch, config: ObjectiveConfig, delta: torch.Tensor | None = None,
    mixed: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss to minimise and its parts (floats, for logging and metrics); ``mixed=False`` scores with the
    current user tower alone (``TwoTowerPolicy.user_vectors``)."""
    user = model.user_vectors(batch.features, batch.user_bucket, batch.history, mixed=mixed)
    vectors, bias = model.item_vectors(batch.item_bucket, batch.item_text)
    q = model.personal_scores(user, vectors[batch.candidates], bias[batch.candidates], delta)  # (B, K)
    q = q.masked_fill(~batch.candidate_mask, 0.0)
    q_logged = q.gather(1, batch.action[:, None]).squeeze(1) + model.position_bias(batch.position).squeeze(-1)
    rm_loss = ((q_logged - batch.reward) ** 2).mean()
    stats = {"reward_model_loss": float(rm_loss.detach())}
    if config.kind == "reward_model":
        return rm_loss, stats

    rule = Exploration("softmax", epsilon=config.epsilon, temperature=config.temperature)
    probs = target_probabilities(q, rule, batch.candidate_mask)
    pi_logged = probs.gather(1, batch.action[:, None]).squeeze(1)
    weight = (pi_logged / batch.propensity).detach().clamp(max=config.clip)
    if config.kind == "snips":
        weight = weight / weight.mean().clamp(min=1e-8)
    baseline = q.detach()
    # Doubly robust surrogate: its gradient is grad(sum_a pi(a) q(a)) + w (r - q(a_logged)) grad log pi(a_logged).
    direct = (probs * baseline).sum(dim=1)
    # The correction uses the top-position reward estimate, matching the action values of `direct`.
    residual = batch.reward - (q_logged.detach())
    correction = weight * residual * torch.log(pi_logged.clamp_min(1e-12))
    pg_loss = -(direct + correction).mean()
    stats.update(
        pg_loss=float(pg_loss.detach()),
        mean_importance_weight=float(weight.mean()),
        clipped_share=float((pi_logged / batch.propensity >= config.clip).float().mean()),
    )
    return rm_loss + config.pg_weight * pg_loss, stats


def retained_gate_loss(model: TwoTowerPolicy, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Squared error of the served (mixed) estimate of each logged reward, with every tower and item held
    fixed: only the gate over the retained towers learns from it (``models/retained.py``)."""
    retained = model.retained
    assert retained is not None
    with torch.no_grad():
        x = model.tower_input(batch.features, batch.user_bucket, batch.history)
        current = model.user_mlp(x)
        towers = retained.towers(x)
        vectors, bias = model.item_vectors(batch.item_bucket, batch.item_text)
        shown = batch.candidates.gather(1, batch.action[:, None]).squeeze(1)
        item, item_bias = vectors[shown], bias[shown] + model.position_bias(batch.position).squeeze(-1)
        every = torch.cat([current[:, None, :], towers], dim=1)                       # (B, 1 + K, d)
        scores = torch.einsum("bkd,bd->bk", every, item) + item_bias[:, None]         # each tower's estimate
    weights = retained.weights(x)
    loss = ((((weights * scores).sum(dim=1)) - batch.reward) ** 2).mean()
    return loss, {"retained_gate_loss": float(loss.detach()),
                  "retained_current_weight": float(weights[:, 0].mean().detach())}
