"""How often ``evaluate --arms`` declares a difference that is not there, and how soon it finds one that is.

    python -m bench.sequential_calibration [--runs N] [--requests R] [--look-every K] [--seed S] [--json]

Each run is an A/B test on simulated traffic: requests split 50/50, rewards drawn per request
as the demo's shop pays them (a click is worth 1, a purchase adds 5 more, at the given rates).
An impatient operator looks after every ``--look-every`` requests and stops at the first verdict
of ``models.sequential.compare`` (the code ``evaluate --arms`` runs). A/A worlds measure false
verdicts (the interval promises at most 5%); A/B worlds measure power and the requests it took.
The fixed 95% interval, looked at as often, is reported beside it for contrast. Requests come
from independent users, or (``heavy_users``) from 300 users whose click rates differ widely and
a few of whom make most requests: there the spread is clustered by user, as ``evaluate`` does.
"""

from __future__ import annotations

import sys

import numpy as np

from bench.machine import result
from bench.runner import run_benchmark
from models.sequential import compare

#: (name, CTR of A, CTR of B): worlds without and with a difference.
WORLDS = (("a_a_ctr_0.05", 0.05, 0.05), ("a_a_ctr_0.15", 0.15, 0.15), ("a_a_ctr_0.40", 0.40, 0.40),
          ("a_a_heavy_users", 0.15, 0.15), ("a_b_0.15_vs_0.17", 0.15, 0.17), ("a_b_0.15_vs_0.20", 0.15, 0.20))
#: Users of the heavy-users world.
HEAVY_USERS = 300
PURCHASE_RATE = 0.1      # of clicks
PURCHASE_WORTH = 5.0


def _rewards(rng: np.random.Generator, ctr: np.ndarray) -> np.ndarray:
    clicks = rng.random(len(ctr)) < ctr
    return clicks + PURCHASE_WORTH * (clicks & (rng.random(len(ctr)) < PURCHASE_RATE))


def _run(rng: np.random.Generator, ctr_a: float, ctr_b: float, requests: int, every: int,
         heavy: bool = False) -> tuple[str, int, bool]:
    """(first verdict, requests at it, whether the naive fixed 95% interval excluded zero at any look)."""
    units = None
    if heavy:
        # Each user's own click rate around the arm's (mean ctr), and a few users making most requests.
        taste = rng.beta(1.0, 1.0 / ctr_a - 1.0, size=HEAVY_USERS)
        in_b = rng.random(HEAVY_USERS) < 0.5
        weight = rng.pareto(1.5, size=HEAVY_USERS) + 1
        units = rng.choice(HEAVY_USERS, size=requests, p=weight / weight.sum())
        is_b = in_b[units]
        rewards = _rewards(rng, taste[units] * np.where(is_b, ctr_b / ctr_a, 1.0))
    else:
        is_b = rng.random(requests) < 0.5
        rewards = _rewards(rng, np.where(is_b, ctr_b, ctr_a))
    first, at, naive = "no difference yet", requests, False
    for n in range(every, requests + 1, every):
        a, b = rewards[:n][~is_b[:n]], rewards[:n][is_b[:n]]
        naive = naive or bool(abs(b.mean() - a.mean()) > 1.96 * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
        if first == "no difference yet":
            verdict = compare(rewards[:n], is_b[:n], units=None if units is None else units[:n]).verdict
            if verdict != "no difference yet":
                first, at = verdict, n
    return first, at, naive


def measure(runs: int, requests: int, every: int, seed: int, progress=None) -> dict:
    rng = np.random.default_rng(seed)
    worlds = {}
    for name, ctr_a, ctr_b in WORLDS:
        outcomes = [_run(rng, ctr_a, ctr_b, requests, every, heavy=name.endswith("heavy_users")) for _ in range(runs)]
        verdicts = [v for v, _, _ in outcomes]
        decided = [n for v, n, _ in outcomes if v != "no difference yet"]
        right = "B better" if ctr_b > ctr_a else None
        worlds[name] = {
            "ctr_a": ctr_a, "ctr_b": ctr_b,
            "any_verdict_share": round(sum(v != "no difference yet" for v in verdicts) / runs, 4),
            "right_verdict_share": round(sum(v == right for v in verdicts) / runs, 4) if right else None,
            "wrong_direction_share": round(sum(v == "A better" for v in verdicts) / runs, 4) if right else None,
            "requests_to_verdict_median": int(np.median(decided)) if decided else None,
            "naive_interval_any_exclusion_share": round(sum(n for _, _, n in outcomes) / runs, 4),
        }
        if progress:
            progress(f"{name}: verdict in {worlds[name]['any_verdict_share']:.1%} of {runs} runs "
                     f"(naive interval {worlds[name]['naive_interval_any_exclusion_share']:.1%})")
    return result("sequential_calibration", {"worlds": worlds},
                  {"runs": runs, "requests": requests, "look_every": every, "seed": seed, "alpha": 0.05,
                   "purchase_rate": PURCHASE_RATE, "purchase_worth": PURCHASE_WORTH})


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--runs", type=int, default=1000)
        parser.add_argument("--requests", type=int, default=20_000)
        parser.add_argument("--look-every", type=int, default=500)
        parser.add_argument("--seed", type=int, default=0)

    def run(args, say):
        return measure(args.runs, args.requests, args.look_every, args.seed, say)

    def summary(out):
        return "; ".join(f"{name}: {w['any_verdict_share']:.1%} verdicts (naive {w['naive_interval_any_exclusion_share']:.1%})"
                         for name, w in out["metrics"]["worlds"].items())

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
