"""Has this user's taste changed within their recent outcomes? A detector from feedback alone.

The fast weights' posterior (``models/meta.py``) reads a user's last outcomes as one
regime. When a user's tastes move (and when they move back), the outcomes from before
the move pull the posterior the wrong way until they age out of the window. So the
window is split, Bayesian-changepoint style (Adams & MacKay 2007, at most one change in
the window): for each boundary c, the outcomes before c and from c on are two regimes
with independent fast weights from the same prior, and the boundaries are weighed by
the evidence (marginal likelihood) of the two parts times a constant-hazard prior. The
user's posterior is the mixture over boundaries of the posterior from the newer part.

With hazard 0 the mixture is the stationary posterior, so the detector is off. Every
boundary comes from two S x S Cholesky factors (``regime_posterior``): about 70 us for
20 outcomes of 33 features on this 2-core machine, against 24 us for the stationary one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The hazard ``ours_changepoint`` serves with, chosen on MovieLens's first half (seed 1: 0.02, 0.03, 0.05, 0.1
#: and 0.2 tried; seed 2 to confirm; ``docs/benchmarks/notes/2026-12-08-changepoint.md``).
#: ``PolicyConfig.change_hazard`` stays 0 (off) until reported seeds say it should be on.
TUNED_HAZARD = 0.05


@dataclass(frozen=True)
class Regime:
    """The posterior of the user's fast weights, mixed over where their current regime began."""

    mean: np.ndarray             # (f,)
    scale: np.ndarray | None     # (f, f), covariance = scale scale^T; None unless asked for
    outcomes: float              # the expected number of recent outcomes the current regime holds
    weights: np.ndarray          # (S + 1,) posterior of the boundary c: outcomes [c, S) are the current regime


def boundary_log_prior(outcomes: int, hazard: float) -> np.ndarray:
    """log P(current regime began at boundary c), c = 0..S: a change at each boundary with probability
    ``hazard``, none at 0 being "before the window"."""
    c = np.arange(outcomes + 1)
    log_stay = np.log1p(-hazard)
    prior = np.where(c == 0, outcomes * log_stay, np.log(hazard) + (outcomes - c) * log_stay)
    return prior


def regime_posterior(feats: np.ndarray, residual: np.ndarray, prior_mean: np.ndarray, prior_tril: np.ndarray,
                     noise_var: float, hazard: float, with_scale: bool) -> Regime:
    """feats (S, f) the outcomes' fast features, oldest first; residual (S,) reward minus the score without
    fast weights; the prior N(prior_mean, prior_tril prior_tril^T). ``0 < hazard < 1``.

    Works in the outcomes' space (S x S), not the weights' (f x f): the evidence of every part of the window
    comes from two Cholesky factors of S x S (one per time direction), and the posterior of every newer part
    from cumulative sums, so the cost is a few small products whatever the number of boundaries.
    """
    if not 0 < hazard < 1:
        raise ValueError(f"hazard must be in (0, 1), not {hazard}")
    s = len(residual)
    rooted = feats @ prior_tril                                                     # (S, f): Phi T
    gram = rooted @ rooted.T + noise_var * np.eye(s)                                # prior covariance of the residuals
    centred = residual - feats @ prior_mean
    try:
        forward = np.linalg.cholesky(gram)
        backward = np.linalg.cholesky(gram[::-1, ::-1])                              # newest first
    except np.linalg.LinAlgError:     # rounding broke definiteness: the prior alone is always valid
        return Regime(prior_mean, prior_tril if with_scale else None, 0.0, np.eye(1, s + 1, s)[0])
    # Log evidence of the first k outcomes in each direction: sum over i <= k of -(z_i^2 / 2 + log L_ii).
    z_old = np.linalg.solve(forward, centred)
    solved = np.linalg.solve(backward, np.concatenate([centred[::-1, None], rooted[::-1]], axis=1))
    z_new, whitened = solved[:, 0], solved[:, 1:]                                   # (S,), (S, f): L^-1 Phi T
    older = np.concatenate([[0.0], np.cumsum(-0.5 * z_old ** 2 - np.log(np.diagonal(forward)))])
    newer = np.concatenate([[0.0], np.cumsum(-0.5 * z_new ** 2 - np.log(np.diagonal(backward)))])
    # Boundary c: outcomes [0, c) are the older part, the newest S - c the current regime.
    log_post = older + newer[::-1] + boundary_log_prior(s, hazard)
    weights = np.exp(log_post - log_post.max())
    weights /= weights.sum()
    # The newest k outcomes' posterior mean: prior_mean + T (sum over i < k of whitened_i z_i).
    steps = np.concatenate([np.zeros((1, whitened.shape[1])), np.cumsum(whitened * z_new[:, None], axis=0)])
    by_newest = weights[::-1]                                                       # weight of "the newest k"
    shift = by_newest @ steps
    mean = prior_mean + prior_tril @ shift
    outcomes = float(by_newest @ np.arange(s + 1))
    scale = None
    if with_scale:
        # Each part's covariance is T (I - W_k^T W_k) T^T with W_k the first k whitened rows; mixed over k, plus
        # the spread of the means.
        reach = np.cumsum(by_newest[::-1])[::-1][1:]                                 # P(k > i) for row i
        spread = steps - shift
        inner = (np.eye(len(shift)) - whitened.T @ (whitened * reach[:, None])
                 + spread.T @ (spread * by_newest[:, None]))
        inner = 0.5 * (inner + inner.T)
        try:
            scale = prior_tril @ np.linalg.cholesky(inner)
        except np.linalg.LinAlgError:
            scale = prior_tril
    return Regime(mean, scale, outcomes, weights)
