"""The join worker's per-message logic: decode, join, dead-letter with origin, event time across inputs."""

from __future__ import annotations

import json

from stream.join.processor import Coordinates, RewardProcessor
from stream.join.reward_join import JoinConfig

T0 = 1_763_900_000.0


def imp(request: str, user: str, items: list[str], ts: float) -> bytes:
    return json.dumps({"event_id": f"imp-{request}", "request_id": request, "user_id": user, "ts": ts,
                       "policy_version": 1, "shown": [{"item_id": i, "position": p, "propensity": 0.25}
                                                      for p, i in enumerate(items)]}).encode()


def clk(event: str, user: str, item: str, ts: float, request: str | None = None) -> bytes:
    body = {"event_id": event, "user_id": user, "item_id": item, "ts": ts}
    if request:
        body["request_id"] = request
    return json.dumps(body).encode()


def at(topic: str, offset: int, partition: int = 0) -> Coordinates:
    return Coordinates(f"p.{topic}", partition, offset, b"u1")


def test_scripted_partition_with_dead_letters_carrying_their_origin():
    proc = RewardProcessor(JoinConfig(click_window=30, grace=5))
    out = proc.handle("impressions", imp("r1", "u1", ["a", "b"], T0), at("impressions", 0))
    out.extend(proc.handle("clicks", clk("c1", "u1", "a", T0 + 1, "r1"), at("clicks", 0)))
    assert [e.event_id for e in out.experiences] == ["r1:a:click"]
    out.extend(proc.handle("clicks", b"{broken", at("clicks", 1)))
    orphan = clk("c9", "u1", "z", T0 + 2, "nope")
    out.extend(proc.handle("clicks", orphan, at("clicks", 2)))
    out.extend(proc.handle("clicks", clk("c2", "u1", "q", T0 + 3, "r1"), at("clicks", 3)))   # not shown
    # Purchases have said nothing: event time is held back, no window closes yet.
    out.extend(proc.handle("impressions", imp("r2", "u1", ["c"], T0 + 100), at("impressions", 1)))
    assert not any(e.kind == "no_click" for e in out.experiences)
    out.extend(proc.reached_end("purchases", 0))
    assert not any(e.kind == "no_click" for e in out.experiences)   # clicks still lag at T0 + 3
    out.extend(proc.reached_end("clicks", 0))
    assert sorted(e.event_id for e in out.experiences) == ["r1:a:click", "r1:b:no_click"]
    letters = sorted(out.dead_letters, key=lambda d: d.offset)
    assert [(d.source_topic, d.offset, d.reason) for d in letters] == [
        ("p.clicks", 1, "malformed_json"), ("p.clicks", 2, "orphan"), ("p.clicks", 3, "not_shown")]
    assert letters[1].original == orphan and letters[0].component == "process"
    assert proc._held == {}


def test_partitions_are_independent():
    proc = RewardProcessor(JoinConfig(click_window=30, grace=5))
    proc.handle("impressions", imp("r1", "u1", ["a"], T0), at("impressions", 0, partition=0))
    out = proc.handle("clicks", clk("c1", "u1", "a", T0 + 1, "r1"), at("clicks", 0, partition=1))
    assert out.experiences == []            # partition 1 has no such impression: parked
    assert set(proc.joins) == {0, 1}


def test_parked_click_released_by_its_impression_is_forgotten():
    proc = RewardProcessor(JoinConfig(grace=5))
    proc.handle("clicks", clk("c1", "u1", "a", T0 + 1, "r1"), at("clicks", 0))
    assert set(proc._held) == {"c1"}
    out = proc.handle("impressions", imp("r1", "u1", ["a"], T0), at("impressions", 0))
    assert [e.event_id for e in out.experiences] == ["r1:a:click"] and proc._held == {}


def test_silent_partition_closes_its_windows_as_wall_time_passes():
    proc = RewardProcessor(JoinConfig(click_window=30, grace=5))
    proc.handle("impressions", imp("r1", "u1", ["a"], T0), at("impressions", 0))
    for source in ("impressions", "clicks", "purchases"):
        proc.reached_end(source, 0)
    assert proc.idle(0, 20.0).experiences == []
    assert [e.event_id for e in proc.idle(0, 20.0).experiences] == ["r1:a:no_click"]


def test_an_event_dated_far_ahead_is_dead_lettered_and_moves_no_event_time():
    """A click dated a day ahead once moved the partition's watermark: every later click became late."""
    proc = RewardProcessor(JoinConfig(click_window=30, grace=5), clock=lambda: T0 + 10)
    out = proc.handle("impressions", imp("r1", "u1", ["a", "b"], T0), at("impressions", 0))
    out.extend(proc.handle("impressions", imp("r2", "u1", ["c"], T0 + 1), at("impressions", 1)))
    future = proc.handle("clicks", clk("c-future", "u1", "b", T0 + 86_400, "r2"), at("clicks", 0))
    assert [(d.reason, d.offset) for d in future.dead_letters] == [("future", 0)]
    assert "ahead of this worker's clock" in future.dead_letters[0].error
    out.extend(proc.handle("clicks", clk("c1", "u1", "a", T0 + 2, "r1"), at("clicks", 1)))
    assert [e.event_id for e in out.experiences] == ["r1:a:click"]     # nothing closed early, nothing late
    # Within the allowed skew an event is joined as usual.
    near = proc.handle("clicks", clk("c2", "u1", "c", T0 + 10 + 299, "r2"), at("clicks", 2))
    assert [e.event_id for e in near.experiences] == ["r2:c:click"] and not near.dead_letters
