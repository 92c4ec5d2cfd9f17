"""What the scorer logs stays within the event contracts' size limits, and what it remembers within its bounds."""

from __future__ import annotations

from stream.serving.scorer import _fits
from stream.serving.user_memory import UserMemory


def test_a_candidate_list_too_long_for_the_event_limit_is_not_logged():
    assert _fits([f"item-{i}" for i in range(1000)])
    assert not _fits(["x" * 128 for _ in range(1000)])


def test_users_idle_past_the_ttl_are_forgotten_though_never_asked_for_again():
    memory = UserMemory(per_user=3, max_users=1000, ttl=60.0)
    for i in range(100):                       # one-time visitors, a second apart
        memory.record(f"once-{i}", "item", 0, 1.0, now=float(i))
    assert len(memory) == 61 and memory.outcomes == 61         # those of the last minute (t = 39..99)
    memory.record("regular", "item", 0, 1.0, now=1000.0)
    assert len(memory) == 1
    for t in range(5):
        memory.record("regular", f"item-{t}", t, 0.0, now=1001.0 + t)
    assert [item for item, _, _ in memory.recent("regular", now=1010.0)] == ["item-2", "item-3", "item-4"]
    assert memory.outcomes == 3
    assert memory.recent("regular", now=5000.0) == [] and len(memory) == 0 and memory.outcomes == 0


def test_the_most_users_remembered_is_capped():
    memory = UserMemory(per_user=3, max_users=10, ttl=3600.0)
    for i in range(50):
        memory.record(f"u{i}", "item", 0, 1.0, now=float(i))
    assert len(memory) == 10 and memory.recent("u39", now=50.0) == [] and memory.recent("u49", now=50.0)
    assert memory.outcomes == 10
