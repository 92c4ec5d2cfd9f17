"""Off-policy estimators: what a candidate policy would earn, judged on logs of another.

Inputs per logged decision i: reward r_i, behaviour propensity mu_i of the logged
action, target probability pi_i of that same action, and (for DM and DR) the
reward model's estimate q_i of the logged action and v_i = sum_a pi(a|x_i) q(x_i, a),
the model's value of the target policy at x_i. The caller computes these over its
action space; these functions only estimate, with bootstrap confidence intervals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    name: str
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def _weights(target: np.ndarray, behaviour: np.ndarray, clip: float | None) -> np.ndarray:
    if np.any(behaviour <= 0) or np.any(behaviour > 1):
        raise ValueError("behaviour propensities must lie in (0, 1]")
    w = np.asarray(target, dtype=np.float64) / np.asarray(behaviour, dtype=np.float64)
    return np.minimum(w, clip) if clip is not None else w


def _ips(r, w, idx):
    return (w[idx] * r[idx]).mean(axis=-1)


def _snips(r, w, idx):
    return (w[idx] * r[idx]).sum(axis=-1) / np.maximum(w[idx].sum(axis=-1), 1e-12)


def _dm(v, idx):
    return v[idx].mean(axis=-1)


def _dr(r, w, q, v, idx):
    return (v[idx] + w[idx] * (r[idx] - q[idx])).mean(axis=-1)


def dr_terms(rewards, behaviour, inputs, clip: float | None = None) -> np.ndarray:
    """Per-decision doubly robust terms (their mean is the DR estimate); ``inputs`` holds the target
    policy's ``target``, ``logged_estimates`` and ``target_values`` (``models.evaluation.TargetInputs``).
    Kept per decision so two policies can be compared on the same resamples."""
    r, w = np.asarray(rewards, dtype=np.float64), _weights(inputs.target, behaviour, clip)
    q = np.asarray(inputs.logged_estimates, dtype=np.float64)
    return np.asarray(inputs.target_values, dtype=np.float64) + w * (r - q)


def bootstrap(name: str, stat, n: int, n_boot: int, alpha: float, seed: int) -> Estimate:
    """``stat`` on all n decisions, and its percentile interval over ``n_boot`` resamples, drawn 200 at a
    time (all at once, (n_boot x n) indices held the learner's memory up)."""
    if n == 0:
        raise ValueError("no logged decisions to estimate from")
    value = float(stat(np.arange(n)))
    if n_boot <= 0:     # a point estimate only (the forgetting probes re-score often and need no interval)
        return Estimate(name, value, value, value, n)
    rng = np.random.default_rng(seed)
    samples = np.concatenate([stat(rng.integers(0, n, size=(min(200, n_boot - i), n)))
                              for i in range(0, n_boot, 200)])
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return Estimate(name, value, float(low), float(high), n)


def ips(rewards, behaviour, target, clip: float | None = None, n_boot: int = 1000, alpha: float = 0.05,
        seed: int = 0) -> Estimate:
    r, w = np.asarray(rewards, dtype=np.float64), _weights(target, behaviour, clip)
    return bootstrap("ips", lambda idx: _ips(r, w, idx), len(r), n_boot, alpha, seed)


def snips(rewards, behaviour, target, clip: float | None = None, n_boot: int = 1000, alpha: float = 0.05,
          seed: int = 0) -> Estimate:
    r, w = np.asarray(rewards, dtype=np.float64), _weights(target, behaviour, clip)
    return bootstrap("snips", lambda idx: _snips(r, w, idx), len(r), n_boot, alpha, seed)


def dm(target_values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    v = np.asarray(target_values, dtype=np.float64)
    return bootstrap("dm", lambda idx: _dm(v, idx), len(v), n_boot, alpha, seed)


def dr(rewards, behaviour, target, logged_estimates, target_values, clip: float | None = None,
       n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    r, w = np.asarray(rewards, dtype=np.float64), _weights(target, behaviour, clip)
    q, v = np.asarray(logged_estimates, dtype=np.float64), np.asarray(target_values, dtype=np.float64)
    return bootstrap("dr", lambda idx: _dr(r, w, q, v, idx), len(r), n_boot, alpha, seed)


def all_estimates(rewards, behaviour, target, logged_estimates, target_values, clip: float | None = None,
                  n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Estimate]:
    """IPS, SNIPS, DM and DR side by side (the learner's publish gate uses DR)."""
    return {
        "ips": ips(rewards, behaviour, target, clip, n_boot=n_boot, alpha=alpha, seed=seed),
        "snips": snips(rewards, behaviour, target, clip, n_boot=n_boot, alpha=alpha, seed=seed),
        "dm": dm(target_values, n_boot=n_boot, alpha=alpha, seed=seed),
        "dr": dr(rewards, behaviour, target, logged_estimates, target_values, clip, n_boot=n_boot, alpha=alpha,
                 seed=seed),
    }
