"""The always-valid interval keeps its error rate under repeated looks, and finds a real difference."""

import numpy as np
import pytest

from models.sequential import compare, margin, requests_needed, spread

LOOK_EVERY = 250
REQUESTS = 10_000


def _first_verdict(rng: np.random.Generator, p_a: float, p_b: float) -> str:
    """Peek after every LOOK_EVERY requests and stop at the first verdict, as an impatient operator would."""
    is_b = rng.random(REQUESTS) < 0.5
    rewards = (rng.random(REQUESTS) < np.where(is_b, p_b, p_a)).astype(float)
    for n in range(LOOK_EVERY, REQUESTS + 1, LOOK_EVERY):
        verdict = compare(rewards[:n], is_b[:n]).verdict
        if verdict != "no difference yet":
            return verdict
    return "no difference yet"


@pytest.mark.parametrize("ctr", [0.05, 0.3])
def test_a_a_comparisons_with_peeking_rarely_declare_a_difference(ctr):
    rng = np.random.default_rng(7)
    verdicts = [_first_verdict(rng, ctr, ctr) for _ in range(200)]
    false = sum(v != "no difference yet" for v in verdicts)
    assert false <= 10, f"{false} of 200 A/A runs declared a difference"   # 5%


def test_a_fixed_interval_checked_as_often_would_not_keep_it():
    """The point of the sequence: the naive 95% interval, peeked at as often, errs far more than 5%."""
    rng = np.random.default_rng(8)
    false = 0
    for _ in range(200):
        is_b = rng.random(REQUESTS) < 0.5
        rewards = (rng.random(REQUESTS) < 0.1).astype(float)
        for n in range(LOOK_EVERY, REQUESTS + 1, LOOK_EVERY):
            a, b = rewards[:n][~is_b[:n]], rewards[:n][is_b[:n]]
            se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            if abs(b.mean() - a.mean()) > 1.96 * se:
                false += 1
                break
    assert false > 20


def test_a_real_difference_is_found_in_the_right_direction():
    rng = np.random.default_rng(9)
    verdicts = [_first_verdict(rng, 0.10, 0.14) for _ in range(50)]
    assert verdicts.count("B better") >= 40 and "A better" not in verdicts
    rng = np.random.default_rng(10)
    assert _first_verdict(rng, 0.14, 0.10) == "A better"


def test_margin_shrinks_and_traffic_needed_meets_it():
    widths = margin(np.array([100, 1_000, 10_000, 100_000]), 1.0)
    assert np.all(np.diff(widths) < 0)
    n = requests_needed(0.05, 1.0)
    assert margin(n, 1.0) < 0.05 <= margin(n - 1, 1.0)


def test_no_verdict_before_both_arms_have_traffic():
    result = compare(np.ones(500), np.zeros(500, dtype=bool))
    assert result.verdict == "no difference yet" and result.more_needed is None
    assert compare(np.array([]), np.array([], dtype=bool)).n == 0


def _heavy_user_a_a(rng: np.random.Generator, clustered: bool) -> bool:
    """An A/A test where users differ a lot and a few make most requests; True if a difference was declared."""
    users = 300
    ctr = rng.beta(0.5, 3, size=users)
    in_b = rng.random(users) < 0.5
    weight = rng.pareto(1.5, size=users) + 1
    who = rng.choice(users, size=REQUESTS, p=weight / weight.sum())
    rewards = (rng.random(REQUESTS) < ctr[who]).astype(float)
    for n in range(500, REQUESTS + 1, 500):
        if compare(rewards[:n], in_b[who[:n]], units=who[:n] if clustered else None).verdict != "no difference yet":
            return True
    return False


def test_heavy_users_need_the_spread_clustered_by_user():
    """Users are assigned, not requests: counted as independent, a few heavy users on one side look like a
    difference; clustered by user, the error rate holds."""
    rng = np.random.default_rng(11)
    clustered = sum(_heavy_user_a_a(rng, clustered=True) for _ in range(200))
    rng = np.random.default_rng(11)
    naive = sum(_heavy_user_a_a(rng, clustered=False) for _ in range(200))
    assert clustered <= 10, f"{clustered} of 200 A/A runs declared a difference"
    assert naive > 40


def test_clustered_spread_equals_the_plain_one_for_one_request_per_user():
    rng = np.random.default_rng(12)
    terms = rng.normal(size=400)
    assert spread(terms, np.arange(400)) == pytest.approx(spread(terms))
