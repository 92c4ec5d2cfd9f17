"""A uniform sample of everything seen, as the replay store's reservoir tier keeps one (``stream/replay/store.py``).

The benchmarks feed the agent replayed decisions the way the learner worker gets them
from the replay store, without running the store: this is its reservoir tier in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class Reservoir(Generic[T]):
    """Algorithm R: after n items, each is held with probability capacity / n."""

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity, self.rng = capacity, rng
        self.items: list[T] = []
        self.seen = 0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, items: Iterable[T]) -> None:
        for item in items:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(item)
            else:
                j = int(self.rng.integers(0, self.seen))
                if j < self.capacity:
                    self.items[j] = item

    def sample(self, n: int) -> list[T]:
        """Up to ``n`` held items, drawn uniformly with replacement (none while empty)."""
        if n <= 0 or not self.items:
            return []
        return [self.items[i] for i in self.rng.integers(0, len(self.items), size=min(n, len(self.items)))]
