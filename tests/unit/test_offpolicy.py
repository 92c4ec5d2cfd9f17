"""Off-policy learning on uniform logs beats the logging policy; DR estimates its value honestly."""

from __future__ import annotations

import pytest
import torch

from models import evaluation
from models.exploration import Exploration
from models.learner import Learner, LearnerConfig
from models.objectives import ObjectiveConfig
from models.policy import PolicyConfig
from sim.logs import SimTensors
from sim.world import World
from tests.unit.conftest import seeded

K = 20


def train(sim: SimTensors, kind: str, logs, epochs: int = 4) -> Learner:
    seeded(0)
    learner = Learner(sim.config, LearnerConfig(objective=ObjectiveConfig(kind=kind)))
    for _ in range(epochs):
        order = torch.randperm(len(logs))
        for start in range(0, len(logs), 256):
            learner.update(logs.rows(order[start:start + 256]))
    return learner


@pytest.fixture(scope="module")
def trained(shop_embeddings):
    config, emb = shop_embeddings
    world = World(config)
    sim = SimTensors(world, emb, PolicyConfig(text_dim=emb.shape[1]))
    logs, _ = sim.uniform_logs(20_000, K)
    return sim, {kind: train(sim, kind, logs) for kind in ("dr", "reward_model")}


def test_learned_policy_clearly_beats_the_uniform_logging_policy(trained):
    sim, learners = trained
    world = sim.world
    users = world.sample_users(5000)
    cands = world.candidates(5000, K)
    uniform = sim.true_value(users, cands, world.rng.integers(0, K, size=5000))
    oracle = sim.true_value(users, cands, world.expected_item_reward(users, cands).argmax(1))
    for kind, learner in learners.items():
        greedy = sim.true_value(users, cands, sim.scores(learner.model, users, cands).argmax(1))
        assert greedy > 1.5 * uniform, (kind, greedy, uniform)
        assert greedy < oracle + 1e-6


def test_dr_estimate_of_the_learned_policy_covers_the_truth(trained):
    sim, learners = trained
    model = learners["dr"].model
    held_out, users = sim.uniform_logs(8000, K)
    rule = Exploration("softmax", temperature=0.5, epsilon=0.05)
    inputs = evaluation.target_inputs(model, held_out, rule)
    # Ground truth: the target policy's exact expected reward on these very contexts.
    truth_items = sim.world.expected_item_reward(users, held_out.candidates.numpy())
    truth = float((inputs.probs * truth_items).sum(axis=1).mean())
    estimates = evaluation.estimate(model, held_out, rule)
    dr = estimates["dr"]
    assert dr.low <= truth <= dr.high, (dr, truth)
    # The estimate also says what matters: better than the policy that logged the data.
    assert dr.low > float(truth_items.mean())


@pytest.mark.parametrize("kind", ["softmax", "squarecb"])
def test_target_inputs_in_chunks_equal_one_pass(trained, monkeypatch, kind):
    """The gate walks many held-out decisions in chunks (bounded memory): the answer must not change."""
    sim, learners = trained
    model = learners["dr"].model
    held_out, _ = sim.uniform_logs(1100, K)
    rule = Exploration(kind, gamma=50.0) if kind == "squarecb" else Exploration(kind, temperature=0.5)
    whole = evaluation.target_inputs(model, held_out, rule)
    monkeypatch.setattr(evaluation, "CHUNK", 256)
    chunked = evaluation.target_inputs(model, held_out, rule)
    for name in ("target", "logged_estimates", "target_values", "probs", "scores"):
        assert getattr(chunked, name).shape == getattr(whole, name).shape
        assert torch.allclose(torch.from_numpy(getattr(chunked, name)), torch.from_numpy(getattr(whole, name)),
                              atol=1e-6), name
