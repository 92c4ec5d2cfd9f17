"""Off-policy estimators on synthetic bandits with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from models import ope


@pytest.fixture()
def bandit():
    """Uniform logging over 4 arms with known mean rewards; target prefers arm 3."""
    rng = np.random.default_rng(0)
    means = np.array([0.1, 0.2, 0.3, 0.6])
    n = 20_000
    actions = rng.integers(0, 4, size=n)
    rewards = (rng.random(n) < means[actions]).astype(float)
    target_dist = np.array([0.1, 0.1, 0.2, 0.6])
    truth = float(target_dist @ means)
    return actions, rewards, target_dist, means, truth


def test_every_estimator_covers_the_truth(bandit):
    actions, rewards, target_dist, means, truth = bandit
    behaviour = np.full(len(actions), 0.25)
    target = target_dist[actions]
    q_hat = means + 0.05                  # a slightly wrong reward model
    logged = q_hat[actions]
    values = np.full(len(actions), float(target_dist @ q_hat))
    est = ope.all_estimates(rewards, behaviour, target, logged, values, n_boot=400)
    for name in ("ips", "snips", "dr"):
        assert est[name].low <= truth <= est[name].high, est[name]
    # The biased reward model alone misses; DR corrects it.
    assert not est["dm"].low <= truth <= est["dm"].high
    assert abs(est["dr"].value - truth) < abs(est["dm"].value - truth)


def test_on_policy_ips_is_the_mean_reward(bandit):
    actions, rewards, *_ = bandit
    p = np.full(len(actions), 0.25)
    assert ope.ips(rewards, p, p, n_boot=10).value == pytest.approx(rewards.mean())


def test_clipping_bounds_the_weights():
    rewards, behaviour, target = np.ones(4), np.full(4, 0.01), np.ones(4)
    assert ope.ips(rewards, behaviour, target, n_boot=10).value == pytest.approx(100.0)
    assert ope.ips(rewards, behaviour, target, clip=10.0, n_boot=10).value == pytest.approx(10.0)


def test_invalid_propensities_and_empty_logs_are_errors():
    with pytest.raises(ValueError, match="propensities"):
        ope.ips(np.ones(2), np.array([0.0, 0.5]), np.ones(2))
    with pytest.raises(ValueError, match="no logged"):
        ope.dm(np.array([]))


def test_bootstrap_is_reproducible(bandit):
    actions, rewards, target_dist, *_ = bandit
    p = np.full(len(actions), 0.25)
    a = ope.snips(rewards, p, target_dist[actions], n_boot=200, seed=3)
    b = ope.snips(rewards, p, target_dist[actions], n_boot=200, seed=3)
    assert a == b and a.low < a.value < a.high
