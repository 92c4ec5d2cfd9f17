"""Exploration rules: exact probabilities, one definition in numpy (serving) and torch (judging)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.exploration import Exploration, probabilities, target_probabilities
from models.policy import PolicyConfig, TwoTowerPolicy
from models.serving import Recent, ServingPolicy

SCORES = np.array([0.5, 0.2, 0.45, -0.1, 0.0])


def test_squarecb_is_inverse_gap_weighting():
    rule = Exploration("squarecb", epsilon=0.0, gamma=20.0)
    p = probabilities(SCORES, rule)
    n = len(SCORES)
    for i in (1, 2, 3, 4):
        assert p[i] == pytest.approx(1.0 / (n + 20.0 * (SCORES[0] - SCORES[i])))
    assert p.sum() == pytest.approx(1.0) and p.argmax() == 0
    greedier = probabilities(SCORES, Exploration("squarecb", epsilon=0.0, gamma=2000.0))
    assert greedier[0] > p[0] > 1.0 / n


def test_epsilon_floor_keeps_every_candidate_reachable():
    for kind in ("softmax", "squarecb", "thompson"):
        p = probabilities(SCORES, Exploration(kind, epsilon=0.1, gamma=1e6, temperature=1e-3))
        assert p.min() >= 0.1 / len(SCORES) - 1e-12 and p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["softmax", "squarecb", "thompson"])
def test_numpy_and_torch_rules_agree(kind):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 6))
    samples = scores[:, None, :] + rng.normal(size=(4, 16, 6))
    rule = Exploration(kind, epsilon=0.05, temperature=0.3, gamma=15.0)
    mask = torch.ones(4, 6, dtype=torch.bool)
    got = target_probabilities(torch.tensor(scores), rule, mask, torch.tensor(samples)).numpy()
    for row in range(4):
        np.testing.assert_allclose(got[row], probabilities(scores[row], rule, samples[row]), atol=1e-12)


def test_torch_rule_ignores_padded_candidates():
    scores = torch.tensor([[0.3, 0.1, 9.0]])
    mask = torch.tensor([[True, True, False]])
    for kind in ("softmax", "squarecb"):
        p = target_probabilities(scores, Exploration(kind, epsilon=0.1, gamma=10.0), mask)
        assert p[0, 2] == 0.0 and float(p.sum()) == pytest.approx(1.0)
        np.testing.assert_allclose(p[0, :2].numpy(), probabilities(np.array([0.3, 0.1]),
                                                                   Exploration(kind, epsilon=0.1, gamma=10.0)))


@pytest.mark.parametrize("kind", ["softmax", "squarecb", "thompson"])
def test_logged_propensities_match_empirical_frequencies(kind):
    """What a served slate logs is what actually happens: over many requests, how often each candidate
    is shown first equals the mean propensity logged for it (thompson: its probabilities vary per request)."""
    torch.manual_seed(0)
    model = TwoTowerPolicy(PolicyConfig(user_features=4, text_dim=8, dim=8, hidden=8, item_buckets=32,
                                        user_buckets=16, fast_dim=4, prior_scale=0.5,
                                        exploration=Exploration(kind, epsilon=0.05, temperature=0.2, gamma=8.0)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    policy = ServingPolicy(model)
    rng = np.random.default_rng(1)
    user = policy.user_vector(rng.normal(size=4).astype(np.float32), 3, np.zeros(8, np.float32))
    vectors, bias = policy.item_vectors(np.arange(6), rng.normal(size=(6, 8)).astype(np.float32))
    recent = Recent(vectors[:3], bias[:3], np.zeros(3, dtype=np.int64), np.array([1.0, 0.0, 0.0]))
    n = 6000
    first = np.zeros(6)
    mean_probs = np.zeros(6)
    for _ in range(n):
        d = policy.decide(user, vectors, bias, recent, 3, rng)
        assert len(set(d.slate)) == 3
        assert d.propensities[0] == pytest.approx(d.probs[d.slate[0]])
        assert d.propensities[1] == pytest.approx(d.probs[d.slate[1]] / (1 - d.probs[d.slate[0]]))
        first[d.slate[0]] += 1
        mean_probs += d.probs
    np.testing.assert_allclose(first / n, mean_probs / n, atol=0.02)


def test_squarecb_gamma_is_resolved_per_version_and_travels_in_the_config():
    rule = Exploration("squarecb", gamma_scale=10.0, gamma_exponent=0.5)
    assert rule.resolved(10_000).gamma == pytest.approx(1000.0)
    assert Exploration("softmax").resolved(10_000) == Exploration("softmax")
    config = PolicyConfig(exploration=rule.resolved(400))
    again = PolicyConfig.from_dict(config.to_dict())
    assert again == config and again.exploration.gamma == pytest.approx(200.0)


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(ValueError, match="kind"):
        Exploration("greedy")
    with pytest.raises(ValueError, match="epsilon"):
        Exploration(epsilon=1.5)
    with pytest.raises(ValueError, match="unknown exploration keys"):
        Exploration.from_dict({"kind": "softmax", "tau": 1})
    assert Exploration("softmax").with_overrides(temperature=0.5, epsilon=None) == Exploration("softmax", temperature=0.5)

