"""Whether a candidate version may replace the live one: refused only when significantly worse.

A point margin on two noisy estimates refuses good candidates in streaks whenever the
held-out logs shift (a drift), which stalls freshness exactly when it matters. The
gate instead bootstraps the *paired* difference of the two doubly robust estimates on
the same held-out decisions (same resamples for both, so the shared noise of the logs
cancels), with one reward model for both, and refuses only when the whole confidence
interval lies below zero by more than a negligible effect (``min_effect``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.batch import Batch
from models.evaluation import target_inputs
from models.ope import bootstrap, dr_terms
from models.policy import TwoTowerPolicy


@dataclass(frozen=True)
class GateConfig:
    #: Two-sided level of the interval: refuse when candidate - live is below zero at this confidence.
    alpha: float = 0.05
    #: Smallest loss worth refusing, as a share of the live version's estimate: with one reward model
    #: for both, near-identical policies differ with almost no variance, so a negligible but "significant"
    #: difference must not stall freshness.
    min_effect: float = 0.02
    #: Held-out decisions needed before the gate compares (fewer: publish, and say so).
    min_decisions: int = 100
    clip: float = 10.0
    n_boot: int = 400


@dataclass(frozen=True)
class Verdict:
    publish: bool
    reason: str                 # passed | refused | too_few_decisions | no_live
    candidate: float            # DR estimate per decision
    live: float
    difference: float           # candidate - live
    low: float                  # the difference's confidence interval
    high: float
    decisions: int

    def metrics(self) -> dict[str, float]:
        return {"dr": self.candidate, "dr_live": self.live, "dr_diff_low": self.low, "dr_diff_high": self.high,
                "gate_decisions": float(self.decisions)}


def judge(candidate: TwoTowerPolicy, live: TwoTowerPolicy | None, batch: Batch | None, config: GateConfig,
          seed: int = 0) -> Verdict:
    n = len(batch) if batch is not None else 0
    nan = float("nan")
    if live is None:
        return Verdict(True, "no_live", nan, nan, nan, nan, nan, n)
    if batch is None or n < config.min_decisions:
        return Verdict(True, "too_few_decisions", nan, nan, nan, nan, nan, n)
    reward, behaviour = batch.reward.cpu().numpy(), batch.propensity.cpu().numpy()
    # One reward model (the candidate's, the freshest) for both: the difference is then what the two
    # policies choose, not how their reward models are calibrated.
    batch = batch.to("cpu")
    ours = dr_terms(reward, behaviour, target_inputs(candidate, batch, seed=seed), config.clip)
    theirs = dr_terms(reward, behaviour, target_inputs(live, batch, seed=seed, reward_model=candidate), config.clip)
    return compare(ours, theirs, config, seed)


def compare(ours: np.ndarray, theirs: np.ndarray, config: GateConfig, seed: int = 0) -> Verdict:
    """The decision on per-decision DR terms of candidate and live version (the same decisions, in order)."""
    n = len(ours)
    diff = ours - theirs
    interval = bootstrap("dr_difference", lambda idx: diff[idx].mean(axis=-1), n, config.n_boot, config.alpha, seed)
    publish = bool(interval.high >= -config.min_effect * abs(float(theirs.mean())))
    return Verdict(publish, "passed" if publish else "refused", float(ours.mean()), float(theirs.mean()),
                   interval.value, interval.low, interval.high, n)
