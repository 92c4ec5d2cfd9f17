"""Which rows a replay store holds, kept in memory in step with its table.

Sampling uniformly or from the newest rows then costs a numpy draw, not a table scan.
The recent window is a ring of seqs in insertion order and the reservoir an array of
slots, so a batch's upkeep costs what the batch holds. A full store evicts rows on every
batch; a sorted index of every row had to be filtered and copied whole for that (8 MB
and a sort per batch at a million rows, which also kept tens of MB of short-lived
buffers in the allocator).
"""

from __future__ import annotations

import numpy as np


class HeldRows:
    """The seqs of the recent window (oldest first) and of the reservoir (by slot)."""

    def __init__(self, recent: np.ndarray, past: np.ndarray, window: int, reservoir: int) -> None:
        # Sized at the bounds (or at what an existing store holds beyond them) and touched now, so a
        # filling store does not grow the process.
        self._ring = np.zeros(max(window, len(recent), 1), dtype=np.int64)
        self._ring[:len(recent)] = recent
        self._head = 0
        self._size = len(recent)
        self.slots = np.zeros(max(reservoir, len(past), 1), dtype=np.int64)
        self.slots[:len(past)] = past
        self.filled = len(past)

    @property
    def recent(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._size + self.filled

    def _ring_positions(self, offsets: np.ndarray) -> np.ndarray:
        return (self._head + offsets) % len(self._ring)

    def newest(self) -> int:
        """The highest seq held (0 when empty): rows inserted after it have higher seqs."""
        if self._size:
            return int(self._ring[(self._head + self._size - 1) % len(self._ring)])
        return int(self.slots[:self.filled].max()) if self.filled else 0

    def window(self) -> np.ndarray:
        """The recent window's seqs, oldest first (a copy)."""
        return self._ring[self._ring_positions(np.arange(self._size))]

    def uniform(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n seqs drawn uniformly, with replacement, from every row held."""
        picks = rng.integers(0, len(self), size=n)
        in_window = picks >= self.filled
        out = np.empty(n, dtype=np.int64)
        out[~in_window] = self.slots[picks[~in_window]]
        out[in_window] = self._ring[self._ring_positions(picks[in_window] - self.filled)]
        return out

    def newest_rows(self, k: int) -> np.ndarray:
        """The k highest seqs held. The window holds the newest rows, so the reservoir (sorted here,
        a full scan) is read only when k reaches past the window."""
        if k <= self._size:
            return self._ring[self._ring_positions(np.arange(self._size - k, self._size))]
        older = np.sort(self.slots[:self.filled])[-(k - self._size):] if self.filled else self.slots[:0]
        return np.concatenate([older, self.window()])

    def apply(self, leaving: int, fresh: np.ndarray, slot_changes: dict[int, int], filled: int) -> None:
        """A committed batch: ``fresh`` rows inserted (in seq order), then the ``leaving`` oldest of the
        window and the batch passed out of it (into reservoir slots, or deleted), ``slot_changes`` the
        reservoir slots that now hold another seq."""
        dropped = min(leaving, self._size)
        self._head = (self._head + dropped) % len(self._ring)
        self._size -= dropped
        kept = fresh[leaving - dropped:]
        if self._size + len(kept) > len(self._ring):
            raise ValueError(f"the window would hold {self._size + len(kept)} rows, more than its "
                             f"{len(self._ring)} places")
        self._ring[self._ring_positions(np.arange(self._size, self._size + len(kept)))] = kept
        self._size += len(kept)
        for slot, seq in slot_changes.items():
            self.slots[slot] = seq
        self.filled = filled
