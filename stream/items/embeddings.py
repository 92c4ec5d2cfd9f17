"""Item text embeddings by item id, kept up to date from the compacted ``items`` topic.

Scorer and learner both need them: the text embedding is what lets a policy score
an item nobody has clicked yet, and what the learner trains the text projection on.
"""

from __future__ import annotations

import threading
import zlib

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
    """Item text embeddings by item id, from the ``items`` topic.

    Embeddings live in one growing matrix (row 0: the zero vector of unknown items) with
    each item's crc32, so a request's candidates cost one dict lookup each and one
    fancy index, not a Python loop of copies and hashes (the scorer's hot path).
    """

    def __init__(self, encoder: TextEncoder, component: str) -> None:
        self._cache = ItemEmbeddingCache(encoder)
        self._embedded = CATALOGUE_ITEMS.labels(component)
        self._unknown = UNKNOWN_ITEMS.labels(component)
        self.dim = encoder.dim
        self._rows: dict[str, int] = {}
        self._matrix = np.zeros((1024, encoder.dim), dtype=np.float32)
        self._crc = np.zeros(1024, dtype=np.int64)
        #: When each row's text was last written (0: never): lets derived per-row caches see a changed text.
        self._stamp = np.zeros(1024, dtype=np.int64)
        self._writes = 0
        self._lock = threading.Lock()

    def add(self, items: list[schemas.Item]) -> None:
        if not items:
            return
        ids = [i.item_id for i in items]
        vectors = self._cache.embed(ids, [item_text(i.title, i.description, i.category) for i in items])
        with self._lock:   # one writer (the follower); readers see a row only once it is filled
            for item, vector in zip(ids, vectors):
                row = self._rows.get(item)
                if row is None:
                    row = len(self._rows) + 1
                    if row >= len(self._matrix):
                        self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
                        self._crc = np.concatenate([self._crc, np.zeros_like(self._crc)])
                        self._stamp = np.concatenate([self._stamp, np.zeros_like(self._stamp)])
                    self._crc[row] = zlib.crc32(item.encode())
                self._matrix[row] = vector
                self._writes += 1
                self._stamp[row] = self._writes
                self._rows.setdefault(item, row)
        self._embedded.inc(len(items))

    def lookup(self, item_ids: list[str], buckets: int) -> tuple[np.ndarray, np.ndarray]:
        """(text embeddings (n, dim), hashed id buckets (n,)): the buckets are ``models.batch.hash_ids``'s,
        from the crc32 kept per item instead of rehashing each id."""
        rows, item_buckets = self.rows(item_ids, buckets)
        return self._matrix[rows], item_buckets

    def rows(self, item_ids: list[str], buckets: int) -> tuple[np.ndarray, np.ndarray]:
        """(catalogue rows (n,), hashed id buckets (n,)); row 0 is the zero text of unknown items."""
        get = self._rows.get
        rows = np.fromiter((get(item, 0) for item in item_ids), dtype=np.int64, count=len(item_ids))
        crcs = self._crc[rows]
        if not rows.all():
            unknown = np.flatnonzero(rows == 0)
            self._unknown.inc(len(unknown))
            for i in unknown:
                crcs[i] = zlib.crc32(item_ids[i].encode())
        return rows, crcs % buckets

    def texts(self, rows: np.ndarray) -> np.ndarray:
        """Text embeddings of catalogue rows."""
        return self._matrix[rows]

    def stamps(self, rows: np.ndarray) -> np.ndarray:
        """When each row's text was last written: read before ``texts`` to know whether a copy is current."""
        return self._stamp[rows]

    def __len__(self) -> int:
        return len(self._rows)
