"""What a candidate policy would do on logged decisions: the inputs of the estimators in ``ope``.

One definition shared by tests, benchmarks, the forgetting probes and the learner's
publish gate. The policy is judged as it is served to a user the scorer knows nothing
about yet: scores with the prior mean of the fast weights, explored by the rule the
version carries (``PolicyConfig.exploration``; Thompson draws come from the prior). The
reward model's estimates of the logged action and of the policy's own choice are taken
at the same (top) position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import ope
from models.batch import Batch
from models.exploration import Exploration, target_probabilities
from models.policy import TwoTowerPolicy


@dataclass(frozen=True)
class TargetInputs:
    target: np.ndarray            # pi(a_logged | x)
    logged_estimates: np.ndarray  # q(x, a_logged) at the top position
    target_values: np.ndarray     # sum_a pi(a | x) q(x, a) at the top position
    probs: np.ndarray             # pi(. | x) over the candidates
    scores: np.ndarray            # q(x, .) at the top position


#: Decisions per pass: a pass holds (decisions x candidates x dim) item vectors (and, for Thompson
#: sampling, draws x candidates scores), so the gate's peak memory stays this size however many
#: held-out decisions it judges.
CHUNK = 512


@torch.no_grad()
def target_inputs(model: TwoTowerPolicy, batch: Batch, rule: Exploration | None = None, seed: int = 0,
                  reward_model: TwoTowerPolicy | None = None) -> TargetInputs:
    """``model``'s exploration policy on ``batch``; the reward estimates come from ``reward_model``
    (default: the model itself). Comparing two policies, give both the same reward model, or the
    difference measures their calibration instead of their choices."""
    rule = rule or model.config.exploration
    if reward_model is not None and reward_model is not model:
        own = target_inputs(model, batch, rule, seed)
        common = target_inputs(reward_model, batch, seed=seed)
        return _inputs(batch, torch.from_numpy(own.probs), torch.from_numpy(common.scores))
    vectors, bias = model.item_vectors(batch.item_bucket, batch.item_text)     # once: the items are shared
    probs, q = [], []
    for start in range(0, len(batch), CHUNK):
        chunk_probs, chunk_q = _policy(model, batch.rows(slice(start, start + CHUNK)), vectors, bias, rule, seed + start)
        probs.append(chunk_probs)
        q.append(chunk_q)
    return _inputs(batch, torch.cat(probs), torch.cat(q))


def _policy(model: TwoTowerPolicy, batch: Batch, vectors: torch.Tensor, bias: torch.Tensor, rule: Exploration,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pi(. | x), q(x, .)) on at most ``CHUNK`` decisions."""
    user = model.user_vectors(batch.features, batch.user_bucket, batch.history)
    items = vectors[batch.candidates]
    q = model.personal_scores(user, items, bias[batch.candidates], model.delta0) + model.position_bias.weight[0, 0]
    samples: torch.Tensor | None = None
    if rule.kind == "thompson":
        gen = torch.Generator(device=q.device).manual_seed(seed)
        noise = torch.randn(len(q), rule.draws, model.delta0.numel(), generator=gen, device=q.device, dtype=q.dtype)
        draws = noise @ model.prior_scale_tril().T                                        # (B, M, f)
        samples = q[:, None, :] + torch.einsum("bkf,bmf->bmk", model.fast_features(items), draws)
    probs = target_probabilities(q, rule, batch.candidate_mask, samples)
    return probs.float().cpu(), q.float().cpu()


def _inputs(batch: Batch, probs: torch.Tensor, q: torch.Tensor) -> TargetInputs:
    pick = batch.action[:, None].cpu()
    q_masked = q.masked_fill(~batch.candidate_mask.cpu(), 0.0)
    return TargetInputs(
        target=probs.gather(1, pick).squeeze(1).numpy(),
        logged_estimates=q.gather(1, pick).squeeze(1).numpy(),
        target_values=(probs * q_masked).sum(1).numpy(),
        probs=probs.numpy(),
        scores=q.numpy(),
    )


def estimate(model: TwoTowerPolicy, batch: Batch, rule: Exploration | None = None,
             clip: float | None = None, n_boot: int = 500, seed: int = 0) -> dict[str, ope.Estimate]:
    """IPS, SNIPS, DM and DR of the model's exploration policy on these logged decisions."""
    t = target_inputs(model, batch, rule, seed)
    return ope.all_estimates(batch.reward.cpu().numpy(), batch.propensity.cpu().numpy(), t.target,
                             t.logged_estimates, t.target_values, clip=clip, n_boot=n_boot, seed=seed)
