"""The changepoint detector on a user's recent outcomes: off it is the stationary posterior, on it finds a move."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.changepoint import boundary_log_prior, regime_posterior
from models.meta import ServeAdapter
from models.policy import PolicyConfig, TwoTowerPolicy


def _stationary(feats, residual, prior_mean, prior_precision, noise_var):
    precision = prior_precision + feats.T @ feats / noise_var
    mean = np.linalg.solve(precision, prior_precision @ prior_mean + feats.T @ residual / noise_var)
    return mean, np.linalg.inv(precision)


def _world(rng, f=5, s=20):
    """Features, prior mean, prior precision and its covariance factor, noise variance."""
    feats = np.concatenate([rng.normal(size=(s, f - 1)), np.ones((s, 1))], axis=1)
    precision = np.eye(f) * 2.0 + 0.3 * np.ones((f, f))
    return feats, 0.1 * np.arange(f), precision, np.linalg.cholesky(np.linalg.inv(precision)), 0.25


def test_boundary_prior_is_a_distribution_that_favours_no_change():
    for hazard in (1e-3, 0.05, 0.5):
        prior = np.exp(boundary_log_prior(20, hazard))
        assert prior.sum() == pytest.approx(1.0)
    prior = np.exp(boundary_log_prior(20, 0.02))
    assert prior.argmax() == 0 and np.all(np.diff(prior[1:]) > 0)     # a recent change is likelier than an old one


def test_a_tiny_hazard_gives_the_stationary_posterior():
    rng = np.random.default_rng(0)
    feats, prior_mean, prior_precision, tril, noise_var = _world(rng)
    residual = feats @ rng.normal(size=feats.shape[1]) + 0.5 * rng.normal(size=len(feats))
    regime = regime_posterior(feats, residual, prior_mean, tril, noise_var, 1e-12, with_scale=True)
    mean, covariance = _stationary(feats, residual, prior_mean, prior_precision, noise_var)
    np.testing.assert_allclose(regime.mean, mean, atol=1e-8)
    np.testing.assert_allclose(regime.scale @ regime.scale.T, covariance, atol=1e-8)
    assert regime.outcomes == pytest.approx(len(feats)) and regime.weights[0] == pytest.approx(1.0)


def test_a_reversed_taste_is_found_and_only_the_newer_outcomes_count():
    rng = np.random.default_rng(1)
    feats, prior_mean, prior_precision, tril, noise_var = _world(rng, s=20)
    truth = np.array([1.5, -1.0, 0.8, 0.0, 0.2])
    residual = feats @ truth + 0.3 * rng.normal(size=20)
    residual[12:] = -(feats[12:] @ truth) + 0.3 * rng.normal(size=8)      # the last 8: the opposite taste
    regime = regime_posterior(feats, residual, prior_mean, tril, noise_var, 0.02, with_scale=True)
    assert abs(int(np.argmax(regime.weights)) - 12) <= 1
    assert 6 <= regime.outcomes <= 10
    newer, _ = _stationary(feats[12:], residual[12:], prior_mean, prior_precision, noise_var)
    everything, _ = _stationary(feats, residual, prior_mean, prior_precision, noise_var)
    assert np.linalg.norm(regime.mean - newer) < 0.25 * np.linalg.norm(everything - newer)
    covariance = regime.scale @ regime.scale.T
    assert np.all(np.linalg.eigvalsh(covariance) > 0)


def test_a_steady_taste_keeps_its_outcomes():
    rng = np.random.default_rng(2)
    feats, prior_mean, prior_precision, tril, noise_var = _world(rng, s=20)
    residual = feats @ np.array([1.0, 0.5, -0.5, 0.3, 0.0]) + 0.3 * rng.normal(size=20)
    regime = regime_posterior(feats, residual, prior_mean, tril, noise_var, 0.02, with_scale=False)
    assert regime.weights[0] > 0.5 and regime.outcomes > 15 and regime.scale is None


def test_hazard_outside_its_range_is_refused():
    feats = np.ones((3, 2))
    for hazard in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="hazard"):
            regime_posterior(feats, np.zeros(3), np.zeros(2), np.eye(2), 1.0, hazard, with_scale=False)
    with pytest.raises(ValueError, match="invalid policy config"):
        PolicyConfig(change_hazard=1.0)


def test_the_serving_adapter_switches_the_detector_with_the_version_config():
    rng = np.random.default_rng(3)
    user, items = rng.normal(size=32), rng.normal(size=(20, 32))
    bias, positions, rewards = np.zeros(20), np.zeros(20, dtype=np.int64), np.r_[np.ones(12), np.zeros(8)]
    torch.manual_seed(0)
    off = ServeAdapter(TwoTowerPolicy(PolicyConfig(text_dim=384)))
    mean, _ = off.current(user, items, bias, positions, rewards, with_scale=False)
    expected, _ = off.posterior(user, items, bias, positions, rewards, with_scale=False)
    np.testing.assert_array_equal(mean, expected)
    torch.manual_seed(0)
    on = ServeAdapter(TwoTowerPolicy(PolicyConfig(text_dim=384, change_hazard=0.05)))
    mean_on, scale = on.current(user, items, bias, positions, rewards, with_scale=True)
    assert scale.shape == (33, 33) and not np.allclose(mean_on, expected)
    # A version carries its hazard, so a scorer serves what the learner chose.
    assert PolicyConfig.from_dict(on_config := PolicyConfig(change_hazard=0.05).to_dict()).change_hazard == 0.05
    assert "change_hazard" in on_config


def _log_evidence(feats, residual, prior_mean, covariance, noise_var):
    if len(residual) == 0:
        return 0.0
    gram = feats @ covariance @ feats.T + noise_var * np.eye(len(residual))
    centred = residual - feats @ prior_mean
    _, log_det = np.linalg.slogdet(gram)
    return -0.5 * (centred @ np.linalg.solve(gram, centred) + log_det + len(residual) * np.log(2 * np.pi))


def test_the_mixture_is_the_brute_force_one_over_every_boundary():
    rng = np.random.default_rng(5)
    feats, prior_mean, prior_precision, tril, noise_var = _world(rng, s=12)
    residual = feats @ rng.normal(size=5) + 0.5 * rng.normal(size=12)
    residual[7:] += 2.0
    covariance = tril @ tril.T
    s, hazard = len(residual), 0.1
    log_post = np.array([_log_evidence(feats[:c], residual[:c], prior_mean, covariance, noise_var)
                         + _log_evidence(feats[c:], residual[c:], prior_mean, covariance, noise_var)
                         for c in range(s + 1)]) + boundary_log_prior(s, hazard)
    weights = np.exp(log_post - log_post.max())
    weights /= weights.sum()
    parts = [_stationary(feats[c:], residual[c:], prior_mean, prior_precision, noise_var) for c in range(s + 1)]
    mean = sum(w * m for w, (m, _) in zip(weights, parts))
    mixed = sum(w * (cov + np.outer(m - mean, m - mean)) for w, (m, cov) in zip(weights, parts))
    regime = regime_posterior(feats, residual, prior_mean, tril, noise_var, hazard, with_scale=True)
    np.testing.assert_allclose(regime.weights, weights, atol=1e-10)
    np.testing.assert_allclose(regime.mean, mean, atol=1e-10)
    np.testing.assert_allclose(regime.scale @ regime.scale.T, mixed, atol=1e-10)
    assert regime.outcomes == pytest.approx(weights @ (s - np.arange(s + 1)))


def test_the_variant_sets_the_hazard_and_a_published_version_carries_it_to_the_scorer():
    from models.agent import OURS, OURS_CHANGEPOINT, Agent
    from models.changepoint import TUNED_HAZARD
    from models.serialization import pack, unpack
    from models.serving import ServingPolicy

    config = PolicyConfig(user_features=4, text_dim=8, dim=8, item_buckets=64, user_buckets=64)
    assert Agent(config, variant=OURS, seed=0).model.config.change_hazard == 0.0
    model = Agent(config, variant=OURS_CHANGEPOINT, seed=0).model
    header, blob = pack(model, "default", 1, parent=None, metrics={}, key=b"k")
    served = ServingPolicy(unpack(header, blob, b"k"))
    assert served.config.change_hazard == TUNED_HAZARD and served.adapter.change_hazard == TUNED_HAZARD
