"""Anti-forgetting: after a shifted period B, the regularised learner keeps clearly more of period A."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from models.continual import ForgettingTracker
from models.learner import Learner, LearnerConfig
from models.policy import PolicyConfig
from sim.logs import SimTensors
from sim.world import Drift, World
from tests.unit.conftest import seeded

K = 20
SHIFT_AT = 10**6


def mix(batch, replay, count: int):
    """``batch`` with ``count`` random old decisions from ``replay`` appended (experience replay)."""
    index = torch.randint(0, len(replay), (count,))
    return type(batch)(**{
        f.name: getattr(batch, f.name) if f.name in ("item_bucket", "item_text")
        else torch.cat([getattr(batch, f.name), getattr(replay, f.name)[index]])
        for f in fields(batch)
    })


def run_periods(shop_embeddings, regularised: bool) -> dict[str, float]:
    config, emb = shop_embeddings
    world = World(config.__class__(**{**config.__dict__, "drifts": (Drift(1, SHIFT_AT, 2 * SHIFT_AT, shift=4),)}))
    sim = SimTensors(world, emb, PolicyConfig(text_dim=emb.shape[1]))
    seeded(0)
    learner = Learner(sim.config, LearnerConfig(
        ewc_strength=1000.0 if regularised else 0.0, distill_strength=1.0 if regularised else 0.0))
    probe_a = (world.sample_users(3000), world.candidates(3000, K))
    shifted = np.flatnonzero(world.users.segment == 1)
    probe_b = (world.rng.choice(shifted, 2000), world.candidates(2000, K))

    def value(probe, step):
        world.set_clock(step)
        users, cands = probe
        return sim.true_value(users, cands, sim.scores(learner.model, users, cands).argmax(1))

    period_a, _ = sim.uniform_logs(16_000, K)
    for _ in range(3):
        order = torch.randperm(len(period_a))
        for start in range(0, len(period_a), 256):
            learner.update(period_a.rows(order[start:start + 256]))
    tracker = ForgettingTracker()
    tracker.record("period_a", value(probe_a, 0))
    b_before = value(probe_b, SHIFT_AT)
    learner.consolidate([period_a.rows(torch.randperm(len(period_a))[:512]) for _ in range(6)])

    # Period B: only the shifted segment's users come, with their new tastes.
    world.set_clock(SHIFT_AT)
    period_b, _ = sim.uniform_logs(12_000, K, users=world.rng.choice(shifted, 12_000))
    for _ in range(500):
        batch = period_b.rows(torch.randint(0, len(period_b), (256,)))
        if regularised:
            replay = period_a.rows(torch.randint(0, len(period_a), (256,)))
            learner.update(mix(batch, period_a, 128), replay=replay)
        else:
            learner.update(batch)
    tracker.record("period_a", value(probe_a, 0))
    return {"forgetting_a": tracker.forgetting("period_a"), "b_before": b_before,
            "b_after": value(probe_b, SHIFT_AT)}


@pytest.fixture(scope="module")
def outcomes(shop_embeddings):
    return {name: run_periods(shop_embeddings, name == "regularised") for name in ("plain", "regularised")}


@pytest.mark.slow   # the fixture trains two learners through four periods: about 10 s
def test_regularised_learner_forgets_clearly_less(outcomes):
    plain, ours = outcomes["plain"]["forgetting_a"], outcomes["regularised"]["forgetting_a"]
    assert plain > 0.25, outcomes      # fine-tuning on B alone loses much of A...
    assert ours < 0.5 * plain, outcomes  # ...the regularised learner keeps clearly more


@pytest.mark.slow
def test_regularised_learner_still_adapts_to_the_shift(outcomes):
    ours, plain = outcomes["regularised"], outcomes["plain"]
    assert ours["b_after"] > ours["b_before"] + 0.1, outcomes
    # At least half of what unconstrained fine-tuning gains on B.
    assert ours["b_after"] - ours["b_before"] > 0.5 * (plain["b_after"] - plain["b_before"]), outcomes


def test_forgetting_tracker_measures_loss_from_the_best():
    tracker = ForgettingTracker()
    tracker.record("p", 0.8)
    tracker.record("p", 1.0)
    tracker.record("p", 0.75)
    assert tracker.forgetting("p") == pytest.approx(0.25)
    assert tracker.report() == {"p": pytest.approx(0.25)}
