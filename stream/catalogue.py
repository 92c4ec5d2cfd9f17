"""Item text embeddings by item id, kept up to date from the compacted ``items`` topic.

Scorer and learner both need them: the text embedding is what lets a policy score
an item nobody has clicked yet, and what the learner trains the text projection on.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter

from models.encoders import ItemEmbeddingCache, TextEncoder, item_text
from stream import schemas

CATALOGUE_ITEMS = Counter(
    "recsys_catalogue_items_embedded_total", "Catalogue entries whose text was embedded, by component.",
    ["component"])
UNKNOWN_ITEMS = Counter(
    "recsys_catalogue_unknown_items_total", "Items looked up with no catalogue entry (zero text vector), "
    "by component.", ["component"])


class Catalogue:
    """Item text embeddings by item id, from the ``items`` topic."""

    def __init__(self, encoder: TextEncoder, component: str) -> None:
        self._cache = ItemEmbeddingCache(encoder)
        self._embedded = CATALOGUE_ITEMS.labels(component)
        self._unknown = UNKNOWN_ITEMS.labels(component)
        self.dim = encoder.dim
        self._zeros = np.zeros(encoder.dim, dtype=np.float32)

    def add(self, items: list[schemas.Item]) -> None:
        if items:
            self._cache.embed([i.item_id for i in items], [item_text(i.title, i.description, i.category)
                                                          for i in items])
            self._embedded.inc(len(items))

    def texts(self, item_ids: list[str]) -> np.ndarray:
        out = np.empty((len(item_ids), self.dim), dtype=np.float32)
        unknown = 0
        for row, item in enumerate(item_ids):
            vector = self._cache.get(item)
            if vector is None:
                unknown += 1
                vector = self._zeros
            out[row] = vector
        if unknown:
            self._unknown.inc(unknown)
        return out

    def __len__(self) -> int:
        return len(self._cache)
