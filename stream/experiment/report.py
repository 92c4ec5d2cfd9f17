"""How the arms of an online experiment compare, from the experiences they earned.

A request is the unit: its reward is the sum of its experiences' rewards (a click and a
later purchase both count), it clicked if any shown item was clicked. Only requests
an arm's own policy served judge that arm: while an arm's learner had published
nothing, its users were served another arm's version (``policy_name`` says so), and
those requests, like the uniform ones before any version, would credit one arm with
another's work. Requests within ``settle`` seconds (the click window) of the newest
no-click outcome are left out: the join may not have closed them yet, and a request
whose no-clicks are still to come would look better than it is.

The difference B - A comes with an always-valid interval (``models/sequential.py``),
so an operator may read this report as often as they like and stop at the first
verdict. Every spread is clustered by user: users, not requests, were assigned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from models.sequential import Comparison, compare, spread
from stream import schemas

#: A user's first requests in the judged window that count as cold start.
COLD_START_REQUESTS = 5
#: 95% normal interval of a mean.
Z95 = 1.959963984540054


@dataclass
class Request:
    request_id: str
    user_id: str
    arm: str | None
    policy_name: str | None
    ts: float                # the earliest of its experiences
    reward: float = 0.0
    clicked: bool = False


def requests_of(experiences: Iterable[schemas.Experience]) -> list[Request]:
    """One ``Request`` per request id, oldest first; repeats of an experience (the topic is at-least-once)
    count once."""
    seen: set[str] = set()
    requests: dict[str, Request] = {}
    for e in experiences:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        request = requests.get(e.request_id)
        if request is None:
            request = requests[e.request_id] = Request(e.request_id, e.user_id, e.arm, e.policy_name, e.ts)
        request.ts = min(request.ts, e.ts)
        request.reward += e.reward
        request.clicked = request.clicked or e.kind == "click"
    return sorted(requests.values(), key=lambda r: (r.ts, r.request_id))


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray, users: np.ndarray) -> Estimate:
        """The mean with a 95% interval whose spread is clustered by user (``users``: integer per value)."""
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(values.mean())
        half = Z95 * spread(values, users) / math.sqrt(n)
        return cls(mean, mean - half, mean + half, n)

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    requests: int
    users: int
    ctr: Estimate
    reward: Estimate
    cold_start_reward: Estimate
    #: Requests of this arm's users that another arm's version served (this arm had none yet): not judged.
    served_by_other: int

    def to_dict(self) -> dict:
        return {"arm": self.arm, "requests": self.requests, "users": self.users, "ctr": self.ctr.to_dict(),
                "reward": self.reward.to_dict(), "cold_start_reward": self.cold_start_reward.to_dict(),
                "served_by_other": self.served_by_other}


@dataclass
class ExperimentReport:
    arms: list[ArmSummary]
    comparison: Comparison | None
    #: Requests left out: of no arm named, uniform before any version, or not settled yet.
    left_out: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"arms": [a.to_dict() for a in self.arms],
                "comparison": None if self.comparison is None else {
                    "of": f"{self.arms[1].arm} - {self.arms[0].arm}", **self.comparison.to_dict()},
                "left_out": self.left_out}


def judge(experiences: Iterable[schemas.Experience], arms: list[str], since: float | None = None,
          until: float | None = None, settle: float = 0.0, alpha: float = 0.05) -> ExperimentReport:
    """Per-arm summaries and, for two arms, B - A (the second named minus the first) with its always-valid
    interval."""
    if len(arms) < 1 or len(set(arms)) != len(arms):
        raise ValueError(f"name distinct arms, got {arms}")
    experiences = list(experiences)
    requests = requests_of(experiences)
    # The join's closing frontier: a no-click is stamped with its impression's time plus the click window.
    closed = [e.ts for e in experiences if e.kind == "no_click"]
    newest = max(closed) if closed else max((r.ts for r in requests), default=0.0)
    left_out = {"other_arms": 0, "before_any_version": 0, "not_settled": 0, "outside_window": 0}
    judged: list[Request] = []
    served_by_other = dict.fromkeys(arms, 0)
    for r in requests:
        if (since is not None and r.ts < since) or (until is not None and r.ts >= until):
            left_out["outside_window"] += 1
        elif r.arm not in served_by_other:
            left_out["other_arms"] += 1
        elif r.ts > newest - settle:
            left_out["not_settled"] += 1
        elif r.policy_name is None:
            left_out["before_any_version"] += 1
        elif r.policy_name != r.arm:
            served_by_other[r.arm] += 1
        else:
            judged.append(r)
    summaries = [_summary(arm, [r for r in judged if r.arm == arm], served_by_other[arm]) for arm in arms]
    comparison = None
    if len(arms) == 2:
        pair = [r for r in judged if r.arm in arms]
        comparison = compare(np.array([r.reward for r in pair]), np.array([r.arm == arms[1] for r in pair]),
                             alpha=alpha, names=(arms[0], arms[1]), units=_units([r.user_id for r in pair]))
    return ExperimentReport(summaries, comparison, left_out)


def _units(users: list[str]) -> np.ndarray:
    """Each request's user as an integer (the unit the spread is clustered by)."""
    return np.unique(np.array(users, dtype=object), return_inverse=True)[1] if users else np.zeros(0, dtype=int)


def _summary(arm: str, requests: list[Request], served_by_other: int) -> ArmSummary:
    rewards = np.array([r.reward for r in requests], dtype=float)
    clicks = np.array([r.clicked for r in requests], dtype=float)
    users = _units([r.user_id for r in requests])
    seen: dict[str, int] = {}
    cold, cold_users = [], []
    for r, unit in zip(requests, users):
        seen[r.user_id] = seen.get(r.user_id, 0) + 1
        if seen[r.user_id] <= COLD_START_REQUESTS:
            cold.append(r.reward)
            cold_users.append(unit)
    return ArmSummary(arm, len(requests), len(seen), Estimate.of(clicks, users), Estimate.of(rewards, users),
                      Estimate.of(np.array(cold, dtype=float), np.array(cold_users, dtype=int)), served_by_other)
