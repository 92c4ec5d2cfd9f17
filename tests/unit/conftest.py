"""Fixtures for learning tests: a simulated shop whose items are embedded by the packaged MiniLM once."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def text_encoder():
    from models.encoders import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def shop_embeddings(text_encoder):
    """(world config, text embeddings of its catalogue): the catalogue is fixed by the seed."""
    from models.encoders import item_text
    from sim.world import World, WorldConfig

    config = WorldConfig(seed=11, n_items=300, n_users=3000)
    world = World(config)
    cat = world.catalog
    texts = [item_text(t, d, c) for t, d, c in zip(cat.titles, cat.descriptions, cat.categories)]
    return config, text_encoder.encode(texts)


def seeded(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def offline_settings(**fields):
    """Settings for a unit test whose Kafka clients are built but never reach a broker.

    Their bootstrap is a closed port; librdkafka's log is off (level 0), or its
    "Connection refused" lines would land in the test run's output, after its summary.
    """
    from stream.config import Settings

    return Settings(bootstrap_servers="127.0.0.1:9", kafka_extra={"log_level": "0"}, **fields)


#: The candidates of ``decisions``: only "good" is ever clicked.
CANDIDATES = ["good", "b1", "b2", "b3", "b4"]


def decisions(n: int = 400, seed: int = 0, features: list[float] | None = None):
    """Uniformly logged top-of-slate experiences where only "good" is ever clicked."""
    from stream import schemas

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        action = CANDIDATES[int(rng.integers(len(CANDIDATES)))]
        clicked = action == "good"
        out.append(schemas.Experience(
            event_id=f"r{i}:{action}:{'click' if clicked else 'no_click'}", request_id=f"r{i}", user_id=f"u{i % 40}",
            action=action, position=0, propensity=1 / len(CANDIDATES), reward=float(clicked),
            reward_parts=schemas.RewardParts(click=float(clicked)), kind="click" if clicked else "no_click",
            policy_version=1, ts=1_763_900_000.0 + i, candidates=list(CANDIDATES),
            context=schemas.Context(features=features or [])))
    return out


def preferring(model, item: str, bias: float):
    """A copy of ``model`` whose item bias for ``item`` is ``bias`` (large: always shown; small: never)."""
    import copy

    import torch

    from models.batch import hash_ids

    out = copy.deepcopy(model).eval()
    bucket = int(hash_ids([item], out.config.item_buckets)[0])
    with torch.no_grad():
        out.item_bias.weight[bucket] = bias
    return out
