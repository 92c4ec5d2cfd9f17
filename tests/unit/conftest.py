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
