"""The numpy serving path computes what the torch policy computes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.meta import adapt_user
from models.policy import PolicyConfig, TwoTowerPolicy
from models.serving import Recent, ServingPolicy, TextProjections, sample_slate, uniform_slate


@pytest.fixture()
def trained_looking_model() -> TwoTowerPolicy:
    torch.manual_seed(0)
    model = TwoTowerPolicy(PolicyConfig(user_features=6, text_dim=12, dim=8, hidden=16, item_buckets=64,
                                        user_buckets=32, fast_dim=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)     # not the zero initialisation: every term matters
    return model


def test_scores_and_adaptation_match_the_torch_policy(trained_looking_model):
    model, serving = trained_looking_model, ServingPolicy(trained_looking_model)
    rng = np.random.default_rng(1)
    features = rng.normal(size=6).astype(np.float32)
    history = rng.normal(size=12).astype(np.float32)
    buckets = rng.integers(0, 64, size=10)
    texts = rng.normal(size=(10, 12)).astype(np.float32)
    user = serving.user_vector(features, 5, history)
    vectors, bias = serving.item_vectors(buckets, texts)
    positions, rewards = rng.integers(0, 5, size=6), rng.integers(0, 2, size=6).astype(np.float32)
    delta, _ = serving.adapter.posterior(user, vectors[:6], bias[:6], positions, rewards, with_scale=False)
    got = serving.estimates(user, vectors, bias, Recent(vectors[:6], bias[:6], positions, rewards))
    with torch.no_grad():
        t_user = model.user_vectors(torch.tensor(features)[None], torch.tensor([5]), torch.tensor(history)[None])[0]
        t_vec, t_bias = model.item_vectors(torch.tensor(buckets), torch.tensor(texts))
        t_delta = adapt_user(model, t_user, t_vec[:6], t_bias[:6], torch.tensor(positions), torch.tensor(rewards))
        want = model.personal_scores(t_user[None], t_vec[None], t_bias[None], t_delta)[0]
    np.testing.assert_allclose(delta, t_delta.numpy(), rtol=1e-4, atol=1e-5)
    top = float(model.position_bias.weight[0, 0].detach())      # estimates are at the top position
    # An estimate's fast weights move 6 / (6 + pseudo-count) of the way from the prior to the posterior mean.
    share = 6 / (6 + model.config.estimate_pseudo_count)
    with torch.no_grad():
        held = model.personal_scores(t_user[None], t_vec[None], t_bias[None],
                                     model.delta0 + share * (t_delta - model.delta0))[0]
    np.testing.assert_allclose(got, held.numpy() + top, rtol=1e-4, atol=1e-5)
    decision = serving.decide(user, vectors, bias, Recent(vectors[:6], bias[:6], positions, rewards), 3,
                              np.random.default_rng(0))
    np.testing.assert_allclose(decision.scores, want.numpy(), rtol=1e-4, atol=1e-5)   # choices: the whole move
    estimates = serving.estimates(user, vectors, bias, None)
    with torch.no_grad():
        prior = model.personal_scores(t_user[None], t_vec[None], t_bias[None], model.delta0)[0]
    np.testing.assert_allclose(estimates, prior.numpy() + float(model.position_bias.weight[0, 0].detach()), rtol=1e-4, atol=1e-5)


def test_an_estimate_follows_a_users_outcomes_more_as_they_add_up(trained_looking_model):
    """n outcomes move an estimate n / (n + pseudo-count) of the posterior's move; no pseudo-count, all of it."""
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(40, 8))
    bias = np.zeros(40)
    serving = ServingPolicy(trained_looking_model)
    user = serving.user_vector(np.zeros(6, dtype=np.float32), 3, np.zeros(12, dtype=np.float32))
    prior = serving.estimates(user, vectors[:1], bias[:1], None)[0]
    moves = []
    for n in (1, 4, 16, 39):
        recent = Recent(vectors[1:n + 1], bias[1:n + 1], np.zeros(n, dtype=np.int64), np.ones(n))
        posterior = serving.decide(user, vectors[:1], bias[:1], recent, 1, rng).scores[0] + serving.position_bias[0]
        estimate = serving.estimates(user, vectors[:1], bias[:1], recent)[0]
        share = n / (n + serving.config.estimate_pseudo_count)
        assert estimate - prior == pytest.approx(share * (posterior - prior), rel=1e-6, abs=1e-9)
        moves.append(share)
    assert moves == sorted(moves) and moves[-1] < 1.0
    loose = TwoTowerPolicy(replace(trained_looking_model.config, estimate_pseudo_count=0.0))
    loose.load_state_dict(trained_looking_model.state_dict())
    loose_serving = ServingPolicy(loose)
    recent = Recent(vectors[1:5], bias[1:5], np.zeros(4, dtype=np.int64), np.ones(4))
    assert loose_serving.estimates(user, vectors[:1], bias[:1], recent)[0] == pytest.approx(
        loose_serving.decide(user, vectors[:1], bias[:1], recent, 1, rng).scores[0] + loose_serving.position_bias[0])


def test_slates_are_distinct_and_propensities_are_sequential_plackett_luce():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    rng = np.random.default_rng(3)
    firsts = np.zeros(4)
    for _ in range(20_000):
        slate, props = sample_slate(probs, 2, rng)
        assert len(set(slate)) == 2
        assert props[0] == pytest.approx(probs[slate[0]])
        assert props[1] == pytest.approx(probs[slate[1]] / (1 - probs[slate[0]]))
        firsts[slate[0]] += 1
    np.testing.assert_allclose(firsts / firsts.sum(), probs, atol=0.015)
    slate, props = uniform_slate(5, 3, rng)
    assert len(set(slate)) == 3 and list(props) == pytest.approx([1 / 5, 1 / 4, 1 / 3])



def test_projected_text_equals_the_per_request_product_and_follows_rewritten_rows():
    torch.manual_seed(3)
    policy = ServingPolicy(TwoTowerPolicy(PolicyConfig(text_dim=16, dim=8)))
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(3000, 16)).astype(np.float32)     # past the cache's first capacity
    stamps = np.ones(3000, dtype=np.int64)
    cache = TextProjections(policy)
    rows = np.array([0, 5, 2999, 5, 17])
    buckets = np.array([1, 2, 3, 2, 4])
    got = policy.item_vectors_projected(buckets, cache.get(rows, stamps[rows], lambda r: matrix[r]))
    want = policy.item_vectors(buckets, matrix[rows])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1])
    # A row whose text was rewritten (its stamp moved) is projected again; the others are not recomputed.
    matrix[5] += 1.0
    stamps[5] = 2
    calls = []
    got = cache.get(rows, stamps[rows], lambda r: (calls.append(list(r)), matrix[r])[1])
    np.testing.assert_allclose(got, policy.project_text(matrix[rows]), rtol=1e-5, atol=1e-6)
    assert calls == [[5, 5]]


def test_the_pseudo_count_travels_with_a_version_and_older_headers_get_the_default():
    from models.serialization import PolicyIntegrityError, pack, unpack

    small = PolicyConfig(user_features=2, text_dim=4, dim=4, hidden=4, item_buckets=8, user_buckets=8, fast_dim=2)
    model = TwoTowerPolicy(replace(small, estimate_pseudo_count=3.0))
    header, blob = pack(model, "p", 1, key=b"k")
    assert ServingPolicy(unpack(header, blob, key=b"k")).adapter.pseudo_count == 3.0
    older, _ = pack(model, "p", 1)                       # unsigned: its header may be edited here
    del older["model_config"]["estimate_pseudo_count"]  # written before the setting existed
    assert unpack(older, blob).config.estimate_pseudo_count == PolicyConfig().estimate_pseudo_count
    for bad in (-1.0, float("nan")):
        forged, _ = pack(model, "p", 1)
        forged["model_config"]["estimate_pseudo_count"] = bad
        with pytest.raises(PolicyIntegrityError, match="config"):
            unpack(forged, blob)
