"""Meta-learning: on users never seen in training, the meta-learned fast weights adapt better."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.learner import Learner, LearnerConfig
from models.meta import ServeAdapter, adapt, adapt_user
from models.policy import PolicyConfig, TwoTowerPolicy
from sim.logs import SimTensors
from sim.world import World
from tests.unit.conftest import seeded, sub_batch

K = 20
SLATE = 5


def train(sim: SimTensors, logs, train_users: np.ndarray, meta: bool) -> TwoTowerPolicy:
    """Both models see identical data; only the meta model adapts on support sets while training."""
    seeded(0)
    task_rng = np.random.default_rng(1)
    learner = Learner(sim.config, LearnerConfig(inner_steps=3 if meta else 0))
    for _ in range(5):
        order = torch.randperm(len(logs))
        for start in range(0, len(logs), 256):
            tasks = sim.tasks(task_rng.choice(train_users, 64), int(task_rng.integers(3, 11)), 4, K, SLATE)
            learner.update(sub_batch(logs, order[start:start + 256]), tasks)
    return learner.model.eval()


def adapted_value(sim: SimTensors, model: TwoTowerPolicy, users: np.ndarray, n_support: int) -> float:
    """True reward of the top pick after adapting each user on its first n_support interactions (k=3)."""
    state = sim.world.rng.bit_generator.state
    tasks = sim.tasks(users, n_support, 1, K, SLATE)
    cands = sim.world.candidates(len(users), K)
    sim.world.rng.bit_generator.state = state  # both models face the same users, support and candidates
    with torch.no_grad():
        user = model.user_vectors(tasks.features, tasks.user_bucket, tasks.history)
        vectors, bias = model.item_vectors(tasks.item_bucket, tasks.item_text)
        shown = vectors[tasks.support_item]
        base = torch.einsum("td,tnd->tn", user, shown) + bias[tasks.support_item] + \
            model.position_bias.weight[tasks.support_position, 0]
        delta = adapt(model.delta0, model.inner_log_lr.exp(), model.fast_features(shown), base,
                      tasks.support_reward, steps=3)
    scores = sim.scores(model, users, cands, delta)
    return sim.true_value(users, cands, scores.argmax(1))


@pytest.fixture(scope="module")
def models_and_sim(shop_embeddings):
    config, emb = shop_embeddings
    world = World(config)
    sim = SimTensors(world, emb, PolicyConfig(text_dim=emb.shape[1]))
    train_users, new_users = np.arange(0, 2000), np.arange(2000, 3000)
    logs, _ = sim.uniform_logs(20_000, K, users=world.rng.choice(train_users, 20_000))
    return sim, new_users, {m: train(sim, logs, train_users, m) for m in (False, True)}


@pytest.mark.parametrize("n_support", [5, 10])
def test_meta_learned_adaptation_beats_plain_training_on_new_users(models_and_sim, n_support):
    sim, new_users, trained = models_and_sim
    users = np.repeat(new_users, 4)
    plain = adapted_value(sim, trained[False], users, n_support)
    meta = adapted_value(sim, trained[True], users, n_support)
    assert meta > plain + 0.03, (meta, plain)


def test_serve_time_adaptation_without_history_is_the_meta_init():
    model = TwoTowerPolicy(PolicyConfig(text_dim=384))
    empty = adapt_user(model, torch.randn(model.config.dim), torch.zeros(0, model.config.dim), torch.zeros(0),
                       torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert torch.equal(empty, model.delta0.detach())
    delta = adapt_user(model, torch.randn(model.config.dim), torch.randn(20, model.config.dim), torch.randn(20),
                       torch.randint(0, 5, (20,)), torch.rand(20), steps=3)
    assert delta.shape == (model.config.fast_dim + 1,) and not torch.equal(delta, model.delta0.detach())


def test_adaptation_moves_toward_what_the_user_rewarded():
    torch.manual_seed(0)
    items = torch.randn(10, 4)
    truth = torch.tensor([1.0, -1.0, 0.5, 0.0, 0.3])
    features = torch.cat([items, torch.ones(10, 1)], dim=1)
    rewards = features @ truth
    delta = adapt(torch.zeros(5), torch.full((5,), 0.3), features, torch.zeros(10), rewards, steps=50)
    assert torch.allclose(delta, truth, atol=0.05)
    one_step = adapt(torch.zeros(5), torch.full((5,), 0.3), features, torch.zeros(10), rewards, steps=1)
    assert ((features @ one_step - rewards) ** 2).mean() < (rewards ** 2).mean()


def test_numpy_serve_adapter_matches_torch_adapt():
    torch.manual_seed(0)
    model = TwoTowerPolicy(PolicyConfig(text_dim=384))
    with torch.no_grad():
        model.delta0.normal_()
        model.position_bias.weight.normal_()
    user, items = torch.randn(model.config.dim), torch.randn(20, model.config.dim)
    bias, positions, rewards = torch.randn(20), torch.randint(0, 5, (20,)), torch.rand(20)
    expected = adapt_user(model, user, items, bias, positions, rewards, steps=3).numpy()
    got = ServeAdapter(model).adapt(user.numpy(), items.numpy(), bias.numpy(), positions.numpy(),
                                    rewards.numpy(), steps=3)
    assert np.allclose(got, expected, atol=1e-5)
