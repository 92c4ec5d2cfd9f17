"""The packaged MiniLM loads offline and puts same-topic items closer together."""

from __future__ import annotations

import numpy as np
import pytest

from models.encoders import EncoderLoadError, ItemEmbeddingCache, TextEncoder
from sim.world import World


def test_embeddings_are_unit_length_and_topic_aware(shop_embeddings):
    config, emb = shop_embeddings
    assert emb.shape == (300, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    topics = World(config).catalog.main_topic
    sim = emb @ emb.T
    same = topics[:, None] == topics[None, :]
    np.fill_diagonal(same, False)
    different = topics[:, None] != topics[None, :]
    assert sim[same].mean() > sim[different].mean() + 0.2
    # Nearest neighbour by text alone usually shares the topic.
    np.fill_diagonal(sim, -1)
    assert (topics[sim.argmax(1)] == topics).mean() > 0.8


def test_cache_encodes_each_text_once(text_encoder):
    cache = ItemEmbeddingCache(text_encoder)
    first = cache.embed(["a", "b", "c"], ["Espresso machine", "Trail running shoes", "Espresso machine"])
    assert cache.encoded == 2  # identical texts share one encode
    again = cache.embed(["b", "a"], ["Trail running shoes", "Espresso machine"])
    assert cache.encoded == 2
    assert np.array_equal(again[0], first[1])
    cache.embed(["a"], ["Mystery novel"])  # text changed: re-encoded
    assert cache.encoded == 3 and not np.array_equal(cache.get("a"), first[0])


def test_missing_model_is_a_clear_offline_error(tmp_path):
    with pytest.raises(EncoderLoadError, match="offline"):
        TextEncoder(tmp_path / "no-such-model")
