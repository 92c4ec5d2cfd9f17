"""The sequence-aware baseline of ``bench movielens`` reads a user's taste from the ratings before it."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from bench.movielens import TUNABLE, TUNED, Ratings, settings_of
from bench.sequence_baseline import SelfAttentive
from bench.tune_movielens import combinations
from models.ranking import auc


def planted_ratings(n: int = 6000, users: int = 200, items: int = 60, history: int = 20, seed: int = 0) -> Ratings:
    """Half the users like even movies, half odd ones; no user id is given to the model, so only the
    user's earlier ratings can tell which half a user is in."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(users, size=n), rng.integers(items, size=n)
    liked = (user % 2) == (item % 2)
    label = (rng.random(n) < np.where(liked, 0.85, 0.15)).astype(np.float32)
    rating = np.where(label > 0, 4.5, 2.0).astype(np.float32)
    previous = np.full((n, history), -1, dtype=np.int64)
    nth = np.zeros(n, dtype=np.int64)
    past: dict[int, deque[int]] = {}
    for i, u in enumerate(user):
        seen = past.setdefault(int(u), deque(maxlen=history))
        previous[i, history - len(seen):] = list(seen)
        nth[i] = len(seen)
        seen.append(i)
    return Ratings(user, item, label, rating, np.arange(n), [str(u) for u in range(users)],
                   [str(m) for m in range(items)], [f"movie {m}" for m in range(items)], previous, nth)


def test_it_learns_a_users_taste_from_their_earlier_ratings():
    data = planted_ratings()
    text = np.random.default_rng(1).normal(size=(60, 8)).astype(np.float32)
    model = SelfAttentive(data, text, seed=1, dim=16, epochs=15, batch_size=128, lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # the other lane's worker shares the cores: a second thread buys little here
    try:
        model.train(np.arange(4000))
        later = np.arange(4000, 6000)
        scores = model.predict(later)
    finally:
        torch.set_num_threads(threads)
    assert scores.shape == (2000,) and np.all((scores > 0) & (scores < 1))
    # Every movie is liked by half the users: without reading the history it could not beat 0.5 much.
    assert auc(data.label[later], scores) > 0.75


def test_it_refuses_to_predict_before_it_has_trained():
    data = planted_ratings(n=100)
    with pytest.raises(RuntimeError, match="after its first period"):
        SelfAttentive(data, np.zeros((60, 4), dtype=np.float32), seed=1).predict(np.arange(10))


def test_a_tuning_grid_is_every_combination_and_a_bad_grid_is_refused():
    assert combinations({"b": [1, 2], "a": ["x"]}) == [{"a": "x", "b": 1}, {"a": "x", "b": 2}]
    for bad in ({}, {"dim": []}, {"dim": 32}, [1, 2]):
        with pytest.raises(ValueError, match="--grid"):
            combinations(bad)


def test_every_tuned_setting_is_one_its_row_takes():
    """A renamed constructor argument would otherwise fail only in the hour-long benchmark."""
    for row, settings in TUNED.items():
        assert row in TUNABLE
        assert set(settings) <= set(settings_of(row)), row
    assert "learning_rate" in settings_of("vw") and "dim" in settings_of("sasrec")
    with pytest.raises(ValueError, match="takes no settings"):
        settings_of("ours")
