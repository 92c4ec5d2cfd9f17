"""An interval for B - A that stays valid however often an operator looks at it.

A fixed-sample confidence interval checked after every batch of traffic declares a
difference that is not there far more often than its 5%: each look is another chance.
A confidence sequence holds at every sample size at once, so an experiment may be
read (and stopped) whenever its interval excludes zero. This is the asymptotic
confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas ("Time-uniform
central limit theory and asymptotic confidence sequences", 2021): a normal-mixture
boundary on the running mean, scaled by the running standard deviation.

Arms are compared through one stream of unit-level terms: a request of arm B
contributes ``y / p``, one of arm A ``-y / (1 - p)``, where ``p`` is B's share of the
requests. The terms' mean is the difference of the arms' means (inverse-propensity
weighting with the known split), so one sequence judges the difference directly.

Users, not requests, are assigned to arms, and one user's requests are alike: a few
heavy users on one side move that side's mean more than as many independent requests
would. Given each request's user, the spread is the cluster-robust one (the terms summed
per user before squaring); treating requests as independent, an A/A test with heavy
users declared a difference in 60% of simulated runs (``tests/unit/test_sequential.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Sample size the boundary is tightest at: an experiment of about this many requests per look.
DEFAULT_TIGHTEST_AT = 10_000
#: Fewer requests than this and no verdict is given (the asymptotics have not begun to hold).
MIN_REQUESTS = 100


def mixture_rho2(tightest_at: float, alpha: float) -> float:
    """The mixture's spread that makes the boundary tightest near ``tightest_at`` samples."""
    log_term = -2 * math.log(alpha)
    return (log_term + math.log(log_term + 1)) / tightest_at


def margin(n: int | np.ndarray, std: float | np.ndarray, alpha: float = 0.05,
           tightest_at: float = DEFAULT_TIGHTEST_AT) -> float | np.ndarray:
    """Half-width of the two-sided confidence sequence of a mean after ``n`` samples of spread ``std``."""
    rho2 = mixture_rho2(tightest_at, alpha)
    n = np.asarray(n, dtype=float)
    grow = n * rho2 + 1
    unit = np.sqrt(2 * grow * np.log(np.sqrt(grow) / alpha) / (n**2 * rho2))
    return std * unit


@dataclass(frozen=True)
class Comparison:
    """B - A after ``n`` requests, with its always-valid interval and what it says."""

    n: int
    difference: float
    low: float
    high: float
    verdict: str           # "B better", "A better", "no difference yet"
    #: Requests still needed for the interval to exclude zero if the observed difference were the true one
    #: (None: decided already, or no difference observed).
    more_needed: int | None

    def to_dict(self) -> dict:
        return {"n": self.n, "difference": self.difference, "low": self.low, "high": self.high,
                "verdict": self.verdict, "more_needed": self.more_needed}


def ipw_terms(rewards: np.ndarray, is_b: np.ndarray, share_b: float) -> np.ndarray:
    """Per-request terms whose mean estimates mean(B) - mean(A) under a random split with B's ``share_b``."""
    if not 0 < share_b < 1:
        raise ValueError(f"share of B must be in (0, 1), got {share_b}")
    rewards = np.asarray(rewards, dtype=float)
    is_b = np.asarray(is_b, dtype=bool)
    return np.where(is_b, rewards / share_b, -rewards / (1 - share_b))


def spread(terms: np.ndarray, units: np.ndarray | None = None) -> float:
    """Per-request standard deviation of ``terms`` for their mean's variance: plain, or with ``units`` (each
    request's user, as integers) the cluster-robust one, so that ``spread**2 / n`` is the mean's variance."""
    n = len(terms)
    if n < 2:
        return math.inf
    if units is None:
        return float(terms.std(ddof=1))
    per_unit = np.bincount(units, weights=terms - terms.mean())
    return float(math.sqrt((per_unit**2).sum() / (n - 1)))


def compare(rewards: np.ndarray, is_b: np.ndarray, share_b: float | None = None, alpha: float = 0.05,
            tightest_at: float = DEFAULT_TIGHTEST_AT, names: tuple[str, str] = ("A", "B"),
            units: np.ndarray | None = None) -> Comparison:
    """Judge arm B against arm A from per-request rewards in arrival order (``is_b``: which arm served it;
    ``units``: each request's user as an integer, for the cluster-robust spread). ``share_b`` defaults to B's
    observed share of the requests."""
    rewards = np.asarray(rewards, dtype=float)
    is_b = np.asarray(is_b, dtype=bool)
    n = len(rewards)
    a_name, b_name = names
    if n == 0 or is_b.all() or not is_b.any():
        return Comparison(n, math.nan, -math.inf, math.inf, "no difference yet", None)
    share = float(is_b.mean()) if share_b is None else share_b
    terms = ipw_terms(rewards, is_b, share)
    difference = float(rewards[is_b].mean() - rewards[~is_b].mean())
    std = spread(terms, None if units is None else np.asarray(units))
    half = float(margin(n, std, alpha, tightest_at))
    low, high = difference - half, difference + half
    if n >= MIN_REQUESTS and low > 0:
        verdict = f"{b_name} better"
    elif n >= MIN_REQUESTS and high < 0:
        verdict = f"{a_name} better"
    else:
        verdict = "no difference yet"
    more = None
    if verdict == "no difference yet" and difference != 0 and math.isfinite(std) and std > 0:
        more = requests_needed(abs(difference), std, alpha, tightest_at) - n
        more = max(more, MIN_REQUESTS - n, 0)
    return Comparison(n, difference, low, high, verdict, more)


def requests_needed(effect: float, std: float, alpha: float = 0.05, tightest_at: float = DEFAULT_TIGHTEST_AT,
                    limit: int = 10**12) -> int:
    """Smallest sample size at which the interval's half-width falls below ``effect`` (``limit`` if never)."""
    if effect <= 0:
        return limit
    high = 2
    while float(margin(high, std, alpha, tightest_at)) >= effect:
        high *= 2
        if high > limit:
            return limit
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        if float(margin(mid, std, alpha, tightest_at)) < effect:
            high = mid
        else:
            low = mid
    return high
