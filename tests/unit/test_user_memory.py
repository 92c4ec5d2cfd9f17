"""The scorer's per-user memory in tables answers as a deque per user would, and adds no object per outcome."""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from stream.serving import user_memory
from stream.serving.user_memory import UserMemory


class DequeModel:
    """The obvious implementation: a deque per user in an LRU order, with the same bounds."""

    def __init__(self, per_user: int, max_users: int, ttl: float) -> None:
        self.per_user, self.max_users, self.ttl = per_user, max_users, ttl
        self.users: OrderedDict[str, tuple[float, deque]] = OrderedDict()

    def record(self, user, item, position, reward, now):
        entry = self.users.pop(user, None)
        events = entry[1] if entry and now - entry[0] <= self.ttl else deque(maxlen=self.per_user)
        events.append((item, position, reward))
        self.users[user] = (now, events)
        while len(self.users) > self.max_users:
            self.users.popitem(last=False)
        while self.users and now - next(iter(self.users.values()))[0] > self.ttl:
            self.users.popitem(last=False)

    def recent(self, user, now):
        entry = self.users.get(user)
        if entry is None:
            return []
        if now - entry[0] > self.ttl:
            del self.users[user]
            return []
        return list(entry[1])


def test_it_answers_as_a_deque_per_user_would(monkeypatch):
    monkeypatch.setattr(user_memory, "FIRST_ROWS", 4)      # grow several times on the way
    rng = np.random.default_rng(7)
    memory, model = UserMemory(5, 40, ttl=30.0), DequeModel(5, 40, ttl=30.0)
    now = 0.0
    for step in range(20_000):
        now += float(rng.exponential(0.05))
        user = f"u{int(rng.zipf(1.3)) % 120}"
        if rng.random() < 0.7:
            args = (user, f"item-{int(rng.integers(50))}", int(rng.integers(10)), float(rng.random() < 0.3), now)
            memory.record(*args)
            model.record(*args)
        else:
            assert memory.recent(user, now) == model.recent(user, now), step
        assert len(memory) == len(model.users)
    assert memory.outcomes == sum(len(events) for _, events in model.users.values())
    assert len(memory._items) == 40            # grew by doubling, capped at max_users


def test_a_user_back_after_the_ttl_starts_afresh():
    memory = UserMemory(3, 10, ttl=60.0)
    memory.record("u", "old", 0, 1.0, now=0.0)
    memory.record("u", "new", 1, 0.0, now=100.0)
    assert memory.recent("u", now=101.0) == [("new", 1, 0.0)] and memory.outcomes == 1


def test_an_outcome_shares_its_item_id_with_every_other_outcome_of_that_item():
    memory = UserMemory(20, 100, ttl=3600.0)
    for u in range(50):
        memory.record(f"u{u}", "".join(["item-", "7"]), 0, 1.0, now=float(u))   # a fresh string each time
    ids = {id(item) for u in range(50) for item, _, _ in memory.recent(f"u{u}", now=60.0)}
    assert len(ids) == 1
