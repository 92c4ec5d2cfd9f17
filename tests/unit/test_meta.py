"""Meta-learning: a learned prior for each user's head, and the closed-form posterior that serves it."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from models.agent import with_tight_prior
from models.learner import Learner, LearnerConfig
from models.meta import ServeAdapter, adapt_user, meta_loss, posterior
from models.policy import PolicyConfig, TwoTowerPolicy
from sim.logs import SimTensors
from sim.world import World
from tests.unit.conftest import seeded

K = 20


def test_posterior_follows_the_data_as_evidence_grows_and_the_prior_without_it():
    torch.manual_seed(0)
    truth = torch.tensor([1.0, -1.0, 0.5, 0.0, 0.3])
    items = torch.cat([torch.randn(200, 4), torch.ones(200, 1)], dim=1)
    rewards = items @ truth + 0.1 * torch.randn(200)
    prior_mean, weak = torch.zeros(5), torch.eye(5) * 10.0
    mean, _ = posterior(prior_mean, weak, 0.1, items[None], rewards[None])
    assert torch.allclose(mean[0], truth, atol=0.05)
    strong = torch.eye(5) * 1e-4
    mean, _ = posterior(prior_mean, strong, 0.1, items[None], rewards[None])
    assert mean.abs().max() < 0.01
    # Masked-out outcomes count for nothing: all masked is the prior.
    mean, _ = posterior(torch.full((5,), 0.7), weak, 0.1, items[None], rewards[None], torch.zeros(1, 200, dtype=torch.bool))
    assert torch.allclose(mean[0], torch.full((5,), 0.7), atol=1e-6)


def test_serve_time_adaptation_without_history_is_the_prior_mean():
    model = TwoTowerPolicy(PolicyConfig(text_dim=384))
    empty = adapt_user(model, torch.randn(model.config.dim), torch.zeros(0, model.config.dim), torch.zeros(0),
                       torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert torch.equal(empty, model.delta0.detach())
    delta = adapt_user(model, torch.randn(model.config.dim), torch.randn(20, model.config.dim), torch.randn(20),
                       torch.randint(0, 5, (20,)), torch.rand(20))
    assert delta.shape == (model.config.fast_dim + 1,) and not torch.equal(delta, model.delta0.detach())


def test_numpy_serve_adapter_matches_torch():
    torch.manual_seed(0)
    model = TwoTowerPolicy(PolicyConfig(text_dim=384))
    with torch.no_grad():
        model.delta0.normal_()
        model.position_bias.weight.normal_()
        model.prior_tril.add_(0.1 * torch.randn_like(model.prior_tril))
    user, items = torch.randn(model.config.dim), torch.randn(20, model.config.dim)
    bias, positions, rewards = torch.randn(20), torch.randint(0, 5, (20,)), torch.rand(20)
    expected = adapt_user(model, user, items, bias, positions, rewards).numpy()
    adapter = ServeAdapter(model)
    got, _ = adapter.posterior(user.numpy(), items.numpy(), bias.numpy(), positions.numpy(), rewards.numpy(),
                               with_scale=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    mean, scale = adapter.posterior(user.numpy(), items.numpy(), bias.numpy(), positions.numpy(), rewards.numpy())
    _, precision = posterior(model.delta0.detach(), model.prior_scale_tril().detach(), model.config.noise,
                             model.fast_features(items)[None].detach(),
                             (rewards - (items @ user + bias + model.position_bias.weight[positions, 0]))[None].detach())
    np.testing.assert_allclose(scale @ scale.T, np.linalg.inv(precision[0].double().numpy()), rtol=1e-3, atol=1e-6)


def top_pick_value(sim: SimTensors, model: TwoTowerPolicy, users: np.ndarray, n_support: int) -> float:
    """True expected reward of each user's top pick among K candidates, after adapting on the user's first
    ``n_support`` outcomes of uniformly random items (the same outcomes and candidates for every model)."""
    state = sim.world.rng.bit_generator.state
    tasks = sim.tasks(users, n_support, 1, K)
    cands = sim.world.candidates(len(users), K)
    sim.world.rng.bit_generator.state = state
    with torch.no_grad():
        user = model.user_vectors(tasks.features, tasks.user_bucket, tasks.history)
        vectors, bias = model.item_vectors(tasks.item_bucket, tasks.item_text)
        shown = vectors[tasks.support_item]
        base = torch.einsum("td,tnd->tn", user, shown) + bias[tasks.support_item] + \
            model.position_bias.weight[tasks.support_position, 0]
        delta, _ = posterior(model.delta0, model.prior_scale_tril(), model.config.noise, model.fast_features(shown),
                             tasks.support_reward - base)
    scores = sim.scores(model, users, cands, delta)
    return sim.true_value(users, cands, scores.argmax(1))


@pytest.fixture(scope="module")
def trained(shop_embeddings):
    """A model trained on uniform logs of the first 2000 users, with meta tasks from them: a few outcomes
    to adapt on, then one fresh outcome to predict."""
    config, emb = shop_embeddings
    world = World(config)
    sim = SimTensors(world, emb, PolicyConfig(text_dim=emb.shape[1]))
    train_users = np.arange(0, 2000)
    logs, _ = sim.uniform_logs(20_000, K, users=world.rng.choice(train_users, 20_000))
    seeded(0)
    learner = Learner(sim.config, LearnerConfig())
    task_rng = np.random.default_rng(1)
    for _ in range(4):
        order = torch.randperm(len(logs))
        for start in range(0, len(logs), 256):
            tasks = sim.tasks(task_rng.choice(train_users, 64), int(task_rng.integers(1, 11)), 1, K)
            learner.update(logs.rows(order[start:start + 256]), tasks)
    return sim, learner.model.eval()


@pytest.mark.parametrize("n_support", [5, 10])
def test_the_meta_learned_prior_adapts_toward_a_new_users_preferences(trained, n_support):
    """On users never trained on, a few outcomes move the head toward what they like: their top pick
    among new candidates is better than the same model's without adapting."""
    sim, model = trained
    users = np.repeat(np.arange(2000, 3000), 3)
    pinned = copy.deepcopy(model)
    with_tight_prior(pinned)
    adapted, unadapted = top_pick_value(sim, model, users, n_support), top_pick_value(sim, pinned, users, n_support)
    assert adapted > unadapted + 0.02, (adapted, unadapted)


def test_the_meta_step_learns_the_prior_from_tasks(shop_embeddings):
    """The meta objective moves the prior (mean and covariance) and the item view, and lowers the error
    of predicting a fresh outcome after adapting, on tasks it was not trained on."""
    config, emb = shop_embeddings
    sim = SimTensors(World(config), emb, PolicyConfig(text_dim=emb.shape[1], prior_scale=3.0))
    seeded(0)
    model = TwoTowerPolicy(sim.config)
    before = copy.deepcopy(model)
    optimizer = torch.optim.Adam([model.delta0, model.prior_tril, model.fast_proj.weight], lr=0.01)
    held = sim.tasks(np.arange(2000, 2400), 5, 1, K)
    start_error = meta_loss(model, held)[0].item()
    rng = np.random.default_rng(0)
    for _ in range(250):
        loss, _ = meta_loss(model, sim.tasks(rng.choice(2000, 256), int(rng.integers(1, 11)), 1, K))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(model.prior_tril, before.prior_tril) and not torch.equal(model.delta0, before.delta0)
    assert meta_loss(model, held)[0].item() < start_error - 0.01


def test_prior_scale_tril_is_lower_triangular_with_a_positive_diagonal():
    model = TwoTowerPolicy(PolicyConfig(text_dim=8, dim=4, hidden=4, fast_dim=3, prior_scale=0.2))
    tril = model.prior_scale_tril()
    assert torch.allclose(tril, torch.diag(torch.full((4,), 0.2)))
    with torch.no_grad():
        model.prior_tril.copy_(torch.randn(4, 4))
        model.prior_tril.diagonal().fill_(-100.0)         # clamped: never singular
    tril = model.prior_scale_tril()
    assert torch.equal(tril, torch.tril(tril)) and (tril.diagonal() >= math.exp(-9.0) * 0.99).all()
