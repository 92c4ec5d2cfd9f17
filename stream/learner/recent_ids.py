"""The last N experience ids the learner read, in memory fixed at start.

The experiences topic is at-least-once, so the learner must recognise a repeat. A set
of the id strings grew with traffic until it held N of them (about 130 bytes each, so
65 MB at the default 500,000, filling for minutes). This keeps a 64-bit fingerprint
of each id in an open-addressing table (linear probing, backward-shift deletion) and
a ring of the same fingerprints in arrival order: 24 bytes per id, allocated and
touched once, so resident memory does not move afterwards. A genuine id is taken for
a repeat only if its fingerprint equals one of the N held: odds about N / 2**64 per id.
"""

from __future__ import annotations

from array import array

_MASK = (1 << 64) - 1


def _fingerprint(event_id: str) -> int:
    # Python's string hash is 64-bit SipHash, salted per process: the window is never saved.
    return (hash(event_id) & _MASK) or 1    # 0 marks an empty slot


class RecentIds:
    """The last ``capacity`` ids seen: a repeat within the window is recognised, older ones are forgotten."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        self.capacity = capacity
        size = 1
        while size < 2 * capacity:     # at most half full: short probe runs
            size *= 2
        self._mask = size - 1
        self._table = array("Q", bytes(8 * size))
        self._ring = array("Q", bytes(8 * capacity))
        self._next = 0      # ring slot the next id goes to
        self._held = 0

    def seen(self, event_id: str) -> bool:
        """True if ``event_id`` is a repeat; otherwise remember it (forgetting the oldest beyond capacity)."""
        fp = _fingerprint(event_id)
        table, mask = self._table, self._mask
        slot = fp & mask
        while (held := table[slot]) != 0:
            if held == fp:
                return True
            slot = (slot + 1) & mask
        if self._held == self.capacity:
            self._remove(self._ring[self._next])
            slot = fp & mask               # the removal may have opened a slot earlier in this id's run
            while table[slot] != 0:
                slot = (slot + 1) & mask
        else:
            self._held += 1
        table[slot] = fp
        self._ring[self._next] = fp
        self._next = (self._next + 1) % self.capacity
        return False

    def _remove(self, fp: int) -> None:
        """Delete ``fp`` and shift later members of its probe run back, so every lookup still finds its key."""
        table, mask = self._table, self._mask
        slot = fp & mask
        while table[slot] != fp:
            slot = (slot + 1) & mask
        hole = slot
        probe = (hole + 1) & mask
        while (held := table[probe]) != 0:
            home = held & mask
            # ``held`` may move into the hole unless its home lies cyclically in (hole, probe].
            if (probe - home) & mask >= (probe - hole) & mask:
                table[hole] = held
                hole = probe
            probe = (probe + 1) & mask
        table[hole] = 0

    def __len__(self) -> int:
        return self._held
