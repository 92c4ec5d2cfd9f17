"""Each user's recent outcomes, for serve-time adaptation: bounded in users, length and age, in tables.

The scorer records an outcome for every experience it follows (hundreds a second) and
reads a user's last ``per_user`` of them on every request. Kept as a deque of tuples per
user, each outcome was three new objects (a tuple, a float, its own copy of the item id)
living for minutes among each request's short-lived garbage: 421 MB for the default
100,000 users with 20 outcomes each (measured in process). Here a user is a row of
three preallocated tables (item ids, positions, rewards) used as a ring; item ids are
interned, so an outcome adds no object of its own: 60 MB for the same users. The tables
grow by doubling up to ``max_users`` rows, so memory follows the users actually seen,
never the traffic.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

#: Rows allocated at first; doubled whenever every row is taken, up to ``max_users``.
FIRST_ROWS = 1024


class UserMemory:
    """Each user's recent (item, position, reward), bounded in users, length and age.

    Users are kept in order of their last outcome, so the idle ones are at the front: each
    record drops those idle past ``ttl`` (a user seen once is not kept until ``max_users``
    others push it out), and a new user beyond ``max_users`` takes the least recently seen
    one's row.
    """

    def __init__(self, per_user: int, max_users: int, ttl: float) -> None:
        if per_user < 1 or max_users < 1:
            raise ValueError(f"per_user and max_users must be >= 1, not {per_user} and {max_users}")
        self.per_user, self.max_users, self.ttl = per_user, max_users, ttl
        self._rows: OrderedDict[str, int] = OrderedDict()     # user -> row, least recently seen first
        self._free: list[int] = []
        self._lock = threading.Lock()
        self.outcomes = 0
        self._items: np.ndarray             # per row: the user's recent items, positions and rewards, ...
        self._positions: np.ndarray
        self._rewards: np.ndarray
        self._last_seen: np.ndarray         # ... and when it was last seen, how many it holds, its oldest slot
        self._count: np.ndarray
        self._oldest: np.ndarray
        self._allocate(min(FIRST_ROWS, max_users))

    def _allocate(self, rows: int) -> None:
        """Tables of ``rows`` rows, the rows held so far copied over."""
        held = 0 if not hasattr(self, "_items") else len(self._items)
        items = np.full((rows, self.per_user), None, dtype=object)
        positions = np.zeros((rows, self.per_user), dtype=np.int32)
        rewards = np.zeros((rows, self.per_user), dtype=np.float64)
        last_seen = np.zeros(rows, dtype=np.float64)
        count = np.zeros(rows, dtype=np.int32)       # outcomes held, up to per_user
        oldest = np.zeros(rows, dtype=np.int32)      # a full row's oldest slot: the next one written
        if held:
            items[:held], positions[:held], rewards[:held] = self._items, self._positions, self._rewards
            last_seen[:held], count[:held], oldest[:held] = self._last_seen, self._count, self._oldest
        self._items, self._positions, self._rewards = items, positions, rewards
        self._last_seen, self._count, self._oldest = last_seen, count, oldest
        self._free.extend(range(rows - 1, held - 1, -1))     # lowest row first

    def record(self, user_id: str, item_id: str, position: int, reward: float, now: float) -> None:
        with self._lock:
            row = self._rows.get(user_id)
            if row is None:
                row = self._new_row()
                self._rows[user_id] = row
            else:
                self._rows.move_to_end(user_id)
                if now - self._last_seen[row] > self.ttl:     # back after the TTL: what it had is stale
                    self._clear(row)
            held = int(self._count[row])
            if held < self.per_user:
                slot = held
                self._count[row] = held + 1
                self.outcomes += 1
            else:                                   # full: overwrite the oldest
                slot = int(self._oldest[row])
                self._oldest[row] = (slot + 1) % self.per_user
            self._items[row, slot] = sys.intern(item_id)
            self._positions[row, slot] = position
            self._rewards[row, slot] = reward
            self._last_seen[row] = now
            self._forget_idle(now)

    def _new_row(self) -> int:
        if len(self._rows) >= self.max_users:
            self._forget_oldest()
        if not self._free:
            self._allocate(min(2 * len(self._items), self.max_users))
        return self._free.pop()         # empty: fresh from _allocate, or cleared by _release

    def _forget_idle(self, now: float) -> None:
        while self._rows and now - self._last_seen[next(iter(self._rows.values()))] > self.ttl:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        self._release(self._rows.popitem(last=False)[1])

    def _clear(self, row: int) -> None:
        self.outcomes -= int(self._count[row])
        self._count[row] = self._oldest[row] = 0

    def _release(self, row: int) -> None:
        self._clear(row)
        self._items[row] = None          # the interned ids may go when no one else holds them
        self._free.append(row)

    def recent(self, user_id: str, now: float) -> list[tuple[str, int, float]]:
        """The user's outcomes, oldest first; none once the user has been idle past the TTL."""
        with self._lock:
            row = self._rows.get(user_id)
            if row is None:
                return []
            if now - self._last_seen[row] > self.ttl:
                del self._rows[user_id]
                self._release(row)
                return []
            held, start = int(self._count[row]), int(self._oldest[row])   # full: oldest at ``start``
            items, positions, rewards = self._items[row], self._positions[row], self._rewards[row]
            if held < self.per_user:
                return list(zip(items[:held].tolist(), positions[:held].tolist(), rewards[:held].tolist()))
            return list(zip(items[start:].tolist() + items[:start].tolist(),
                            positions[start:].tolist() + positions[:start].tolist(),
                            rewards[start:].tolist() + rewards[:start].tolist()))

    def __len__(self) -> int:
        return len(self._rows)
