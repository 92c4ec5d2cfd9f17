"""Two-tower scoring, exploration and Plackett-Luce slates with exact propensities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.exploration import Exploration, target_probabilities
from models.policy import (
    PolicyConfig,
    TwoTowerPolicy,
    greedy_slates,
    sample_slates,
    sequential_propensities,
)


def test_exploration_mixes_softmax_and_floor():
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    rule = Exploration("softmax", temperature=0.5, epsilon=0.2)
    p = target_probabilities(scores, rule)
    assert torch.allclose(p.sum(), torch.tensor(1.0))
    assert (p >= 0.2 / 4 - 1e-7).all()
    masked = target_probabilities(scores, rule, mask=torch.tensor([[True, True, False, True]]))
    assert masked[0, 2] == 0 and torch.allclose(masked.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError):
        Exploration("softmax", temperature=0.0, epsilon=0.1)


def test_plackett_luce_propensities_match_empirical_frequencies():
    probs = torch.tensor([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]]).repeat(200_000, 1)
    gen = torch.Generator().manual_seed(0)
    slates, props = sample_slates(probs, 3, gen)
    first = slates[:, 0].numpy()
    # Position 0: frequency of each item equals its probability (chi-square, 5 dof).
    counts = np.bincount(first, minlength=6)
    expected = probs[0].numpy() * len(first)
    chi2 = (((counts - expected) ** 2) / expected).sum()
    assert chi2 < 20.5  # p = 0.001
    # Position 1 given item 0 on top: frequencies equal the logged conditional propensity.
    top0 = first == 0
    second = slates[top0, 1].numpy()
    cond = np.bincount(second, minlength=6)[1:] / top0.sum()
    logged = {int(i): float(p) for i, p in zip(second, props[top0, 1])}
    for item in range(1, 6):
        assert logged[item] == pytest.approx(probs[0, item].item() / (1 - 0.4), rel=1e-5)
        assert cond[item - 1] == pytest.approx(logged[item], abs=0.006)
    assert all(len(set(row)) == 3 for row in slates[:1000].tolist())


def test_sequential_propensities_formula():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    props = sequential_propensities(probs, torch.tensor([[1, 0, 2]]))
    assert torch.allclose(props, torch.tensor([[0.3, 0.5 / 0.7, 1.0]]))


def test_greedy_is_deterministic_top_k():
    scores = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    slates, props = greedy_slates(scores, 2)
    assert slates.tolist() == [[1, 2]] and props.tolist() == [[1.0, 1.0]]
    masked, _ = greedy_slates(scores, 2, mask=torch.tensor([[True, False, True, True]]))
    assert masked.tolist() == [[2, 0]]


def test_new_item_is_scored_from_its_text():
    torch.manual_seed(0)
    cfg = PolicyConfig(user_features=4, text_dim=8, dim=8)
    model = TwoTowerPolicy(cfg)
    text = torch.randn(3, 8)
    buckets = torch.tensor([5, 6, 7])
    vectors, _ = model.item_vectors(buckets, text)
    unseen, _ = model.item_vectors(torch.tensor([9]), text[:1])
    # Item-id embeddings start near zero, so text drives the score of an item never trained on.
    assert torch.nn.functional.cosine_similarity(unseen, vectors[:1]).item() > 0.95


def test_scores_shape_and_fast_weights_shift_them():
    cfg = PolicyConfig(user_features=4, text_dim=8, dim=8, fast_dim=3)
    model = TwoTowerPolicy(cfg)
    args = (torch.randn(2, 4), torch.tensor([1, 2]), torch.zeros(2, 8), torch.arange(5), torch.randn(5, 8),
            torch.tensor([[0, 1, 2], [2, 3, 4]]))
    base = model.score_candidates(*args)
    assert base.shape == (2, 3)
    delta = torch.zeros(2, cfg.fast_dim + 1)
    delta[:, -1] = 1.0  # the offset entry adds to every score
    assert torch.allclose(model.score_candidates(*args, delta=delta), base + 1.0, atol=1e-6)
