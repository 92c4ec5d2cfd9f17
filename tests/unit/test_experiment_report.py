"""The experiment report: requests as units, only an arm's own policy judging it, repeats once."""

import numpy as np
import pytest

from stream import schemas
from stream.experiment.report import judge, requests_of


def _exp(request: str, user: str, item: str, kind: str, ts: float, arm: str | None, by: str | None,
         reward: float | None = None) -> schemas.Experience:
    reward = {"click": 1.0, "no_click": 0.0, "purchase": 5.0}[kind] if reward is None else reward
    return schemas.Experience(
        event_id=f"{request}:{item}:{kind}", request_id=request, user_id=user, action=item, position=0,
        propensity=0.5, reward=reward, reward_parts=schemas.RewardParts(), kind=kind, policy_version=1 if by else 0,
        ts=ts, arm=arm, policy_name=by)


def test_a_request_sums_its_outcomes_and_counts_a_repeat_once():
    rows = [_exp("r1", "u1", "i1", "click", 10.0, "A", "A"), _exp("r1", "u1", "i2", "no_click", 40.0, "A", "A"),
            _exp("r1", "u1", "i1", "purchase", 50.0, "A", "A")]
    [request] = requests_of(rows + rows[:1])
    assert request.reward == 6.0 and request.clicked and request.ts == 10.0


def test_only_requests_an_arms_own_policy_served_judge_it():
    rows = [
        _exp("a1", "u1", "i", "click", 1.0, "A", "A"), _exp("a2", "u1", "i", "no_click", 2.0, "A", "A"),
        _exp("b1", "u2", "i", "click", 3.0, "B", "A"),      # B had no version yet: served by A
        _exp("b2", "u2", "i", "no_click", 4.0, "B", "B"),
        _exp("z1", "u3", "i", "click", 5.0, "A", None),     # uniform, before any version
        _exp("c1", "u4", "i", "click", 6.0, "C", "C"),      # an arm not asked about
        _exp("late", "u1", "i", "click", 99.0, "A", "A"), _exp("end", "u5", "j", "no_click", 100.0, "B", "B"),
    ]
    report = judge(rows, ["A", "B"], settle=30.0)
    a, b = report.arms
    assert (a.requests, a.reward.value, a.served_by_other) == (2, 0.5, 0)
    assert (b.requests, b.reward.value, b.served_by_other) == (1, 0.0, 1)
    assert report.left_out == {"other_arms": 1, "before_any_version": 1, "not_settled": 2, "outside_window": 0}
    assert report.comparison.n == 3 and report.comparison.difference == pytest.approx(-0.5)


def test_cold_start_is_each_users_first_five_requests():
    rows = [_exp(f"r{i}", "u1", "i", "click" if i < 5 else "no_click", float(i), "A", "A") for i in range(8)]
    rows.append(_exp("end", "u9", "i", "no_click", 1000.0, "A", "A"))
    [a] = judge(rows, ["A"], settle=30.0).arms
    assert a.cold_start_reward.value == 1.0 and a.cold_start_reward.n == 5
    assert a.reward.value == pytest.approx(5 / 8)


def test_the_window_bounds_what_is_judged():
    rows = [_exp(f"r{i}", f"u{i}", "i", "click", float(i), "A" if i % 2 else "B", "A" if i % 2 else "B")
            for i in range(100)]
    report = judge(rows, ["A", "B"], since=20.0, until=60.0)
    assert sum(arm.requests for arm in report.arms) == 40
    assert report.left_out["outside_window"] == 60


def test_arms_must_be_distinct():
    with pytest.raises(ValueError):
        judge([], ["A", "A"])
    assert np.isnan(judge([], ["A", "B"]).comparison.difference)
