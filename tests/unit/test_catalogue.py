"""Catalogue lookups: the same buckets ``hash_ids`` gives (training and serving must agree), zeros for unknown items."""

from __future__ import annotations

import numpy as np

from models.batch import hash_ids
from stream import schemas
from stream.items.embeddings import Catalogue


def test_lookup_buckets_match_hash_ids_and_unknown_items_get_zero_text(text_encoder):
    catalogue = Catalogue(text_encoder, "unit-test")
    catalogue.add([schemas.Item("shoe", "Trail running shoes", ts=1.7e9), schemas.Item("pan", "Frying pan", ts=1.7e9)])
    ids = ["pan", "never-listed", "shoe"]
    texts, buckets = catalogue.lookup(ids, 4096)
    assert list(buckets) == list(hash_ids(ids, 4096))
    assert np.allclose(texts[1], 0.0) and not np.allclose(texts[0], 0.0) and not np.allclose(texts[2], 0.0)
    np.testing.assert_allclose(texts[2], text_encoder.encode(["Trail running shoes"])[0], atol=1e-5)
