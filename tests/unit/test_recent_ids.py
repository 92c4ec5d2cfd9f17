"""The learner's fixed-memory window of experience ids against a plain set-and-queue model."""

import random
from collections import deque

import pytest

from stream.learner import recent_ids
from stream.learner.recent_ids import RecentIds


class _Model:
    def __init__(self, capacity: int) -> None:
        self.capacity, self.order, self.ids = capacity, deque(), set()

    def seen(self, event_id: str) -> bool:
        if event_id in self.ids:
            return True
        self.ids.add(event_id)
        self.order.append(event_id)
        if len(self.order) > self.capacity:
            self.ids.discard(self.order.popleft())
        return False


def test_recent_ids_forget_the_oldest_beyond_their_capacity():
    ids = RecentIds(3)
    assert [ids.seen(x) for x in "abca"] == [False, False, False, True]
    assert not ids.seen("d") and len(ids) == 3
    assert not ids.seen("a")                             # "a" was the oldest: forgotten when "d" came


@pytest.mark.parametrize("crowded", [False, True])
@pytest.mark.parametrize("capacity", [1, 2, 7, 64])
def test_recent_ids_answer_as_a_set_and_queue_would(monkeypatch, capacity, crowded):
    if crowded:
        # Every fingerprint shares one of 4 home slots: long probe runs that wrap around the table,
        # which is where deleting from an open-addressing table goes wrong.
        monkeypatch.setattr(recent_ids, "_fingerprint", lambda x: int(x) << 20 | int(x) % 4 + 1)
    rng = random.Random(capacity)
    window, model = RecentIds(capacity), _Model(capacity)
    for _ in range(5000):
        event_id = str(rng.randrange(3 * capacity))
        assert window.seen(event_id) == model.seen(event_id)
    assert len(window) == len(model.ids)


def test_recent_ids_refuse_an_empty_window():
    with pytest.raises(ValueError):
        RecentIds(0)
