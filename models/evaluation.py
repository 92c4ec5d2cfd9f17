"""What a candidate policy would do on logged decisions: the inputs of the estimators in ``ope``.

One definition shared by tests, benchmarks and the learner's publish gate, so the
reward model's estimates of the logged action and of the policy's own choice are
always taken at the same (top) position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import ope
from models.batch import Batch
from models.policy import TwoTowerPolicy, exploration_probs


@dataclass(frozen=True)
class TargetInputs:
    target: np.ndarray            # pi(a_logged | x)
    logged_estimates: np.ndarray  # q(x, a_logged) at the top position
    target_values: np.ndarray     # sum_a pi(a | x) q(x, a) at the top position
    probs: np.ndarray             # pi(. | x) over the candidates


@torch.no_grad()
def target_inputs(model: TwoTowerPolicy, batch: Batch, temperature: float, epsilon: float) -> TargetInputs:
    q = model.score_candidates(batch.features, batch.user_bucket, batch.history, batch.item_bucket,
                               batch.item_text, batch.candidates)
    q = q + model.position_bias.weight[0, 0]
    probs = exploration_probs(q, temperature, epsilon, batch.candidate_mask)
    pick = batch.action[:, None]
    q_masked = q.masked_fill(~batch.candidate_mask, 0.0)
    return TargetInputs(
        target=probs.gather(1, pick).squeeze(1).float().cpu().numpy(),
        logged_estimates=q.gather(1, pick).squeeze(1).float().cpu().numpy(),
        target_values=(probs * q_masked).sum(1).float().cpu().numpy(),
        probs=probs.float().cpu().numpy(),
    )


def estimate(model: TwoTowerPolicy, batch: Batch, temperature: float, epsilon: float,
             clip: float | None = None, n_boot: int = 500, seed: int = 0) -> dict[str, ope.Estimate]:
    """IPS, SNIPS, DM and DR of the model's exploration policy on these logged decisions."""
    t = target_inputs(model, batch, temperature, epsilon)
    return ope.all_estimates(batch.reward.cpu().numpy(), batch.propensity.cpu().numpy(), t.target,
                             t.logged_estimates, t.target_values, clip=clip, n_boot=n_boot, seed=seed)
