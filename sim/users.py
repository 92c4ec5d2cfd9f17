"""Users: latent topic preferences, segments, observable features and arrival times.

Preferences are hidden from every policy; what a policy sees are noisy features
that are a fixed linear view of the preferences (plus the segment as an
attribute), like the demographic and behavioural features a real shop has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Population:
    user_ids: np.ndarray        # (n,) str
    segment: np.ndarray         # (n,) int
    preference: np.ndarray      # (n, T) float32, the hidden truth (changes under drift)
    features: np.ndarray        # (n, F) float32, what policies observe
    arrival_step: np.ndarray    # (n,) int, first step at which the user may appear

    def __len__(self) -> int:
        return len(self.user_ids)

    def arrived(self, step: int) -> np.ndarray:
        return np.flatnonzero(self.arrival_step <= step)


def make_population(
    rng: np.random.Generator,
    n_users: int,
    n_topics: int,
    n_features: int,
    n_segments: int,
    new_users: int = 0,
    new_users_from: int = 0,
    new_users_until: int = 0,
    preference_scale: float = 2.2,
    individuality: float = 0.8,
    feature_noise: float = 0.3,
    feature_personal: float = 0.35,
) -> Population:
    """``n_users`` exist from the start; ``new_users`` more arrive between the two steps.

    A user's preference is its segment's centroid plus a personal part
    (``individuality``): the personal part is what meta-learned per-user adaptation
    can recover from a user's first clicks.
    """
    total = n_users + new_users
    centroids = rng.normal(0.0, 1.0, size=(n_segments, n_topics))
    segment = rng.integers(0, n_segments, size=total)
    personal = rng.normal(0.0, individuality, size=(total, n_topics))
    preference = (centroids[segment] + personal).astype(np.float32)
    preference *= preference_scale / np.maximum(np.linalg.norm(preference, axis=1, keepdims=True), 1e-6)
    projection = rng.normal(0.0, 1.0 / np.sqrt(n_topics), size=(n_topics, n_features))
    # Features see the segment centroid clearly and the personal part only dimly
    # (``feature_personal``): the rest of a user's taste shows only in behaviour.
    observed = centroids[segment] + feature_personal * personal
    features = (observed @ projection + rng.normal(0.0, feature_noise, size=(total, n_features)))
    arrival = np.zeros(total, dtype=np.int64)
    if new_users:
        arrival[n_users:] = np.sort(rng.integers(new_users_from, max(new_users_until, new_users_from + 1),
                                                 size=new_users))
    ids = np.array([f"user-{u}" for u in range(total)])
    return Population(ids, segment, preference, features.astype(np.float32), arrival)
