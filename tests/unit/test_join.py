"""The reward join: exact experiences and rejections for scripted event sequences."""

from __future__ import annotations

import msgspec
import pytest

from stream.join.reward_join import JoinConfig, JoinOutput, RewardJoin
from stream.schemas import Click, Context, Impression, Purchase, ShownItem

T0 = 1_763_900_000.0


def impression(request: str, user: str, items: list[str], ts: float, version: int = 3) -> Impression:
    return Impression(event_id=f"imp-{request}", request_id=request, user_id=user, ts=ts, policy_version=version,
                      shown=[ShownItem(item, p, round(1.0 / (len(items) - p), 6)) for p, item in enumerate(items)],
                      context=Context(features=[0.5, 1.0]))


def click(event: str, user: str, item: str, ts: float, request: str | None = None) -> Click:
    return Click(event_id=event, user_id=user, item_id=item, ts=ts, request_id=request)


def purchase(event: str, user: str, item: str, ts: float, value: float, request: str | None = None) -> Purchase:
    return Purchase(event_id=event, user_id=user, item_id=item, ts=ts, value=value, request_id=request)


def summary(out: JoinOutput) -> list[tuple[str, float]]:
    return [(e.event_id, e.reward) for e in out.experiences]


def test_scripted_sequence_gives_exact_experiences_and_rejections():
    join = RewardJoin(JoinConfig(click_window=30, purchase_window=3600, grace=5,
                                 click_weight=1.0, purchase_weight=2.0, value_weight=0.01))
    out = JoinOutput()
    out.extend(join.impression(impression("req-1", "u1", ["a", "b", "c"], T0)))
    first = join.click(click("clk-1", "u1", "a", T0 + 2, "req-1"))
    assert summary(first) == [("req-1:a:click", 1.0)]           # emitted at once, not at window close
    out.extend(first)
    out.extend(join.click(click("clk-1", "u1", "a", T0 + 2, "req-1")))    # the same event again
    out.extend(join.click(click("clk-1b", "u1", "a", T0 + 3, "req-1")))   # a second click on the same item
    out.extend(join.advance(T0 + 6))
    out.extend(join.click(click("clk-2", "u1", "b", T0 + 4)))             # out of order, no request_id
    out.extend(join.click(click("clk-9", "u1", "z", T0 + 5, "req-999")))  # orphan: no such impression
    out.extend(join.click(click("clk-3", "u1", "q", T0 + 6, "req-1")))    # item not in the slate
    out.extend(join.advance(T0 + 36))                                     # click window + grace passed
    out.extend(join.purchase(purchase("pur-1", "u1", "a", T0 + 100, 50.0, "req-1")))  # late purchase
    out.extend(join.purchase(purchase("pur-1", "u1", "a", T0 + 100, 50.0, "req-1")))  # duplicate
    out.extend(join.advance(T0 + 4000))

    assert sorted(summary(out)) == sorted([
        ("req-1:a:click", 1.0),
        ("req-1:b:click", 1.0),
        ("req-1:c:no_click", 0.0),
        ("req-1:a:purchase", 2.5),
    ])
    by_id = {e.event_id: e for e in out.experiences}
    purchase_exp = by_id["req-1:a:purchase"]
    assert (purchase_exp.reward_parts.click, purchase_exp.reward_parts.purchase, purchase_exp.reward_parts.value) \
        == (0.0, 1.0, 50.0)
    assert by_id["req-1:b:click"].position == 1 and by_id["req-1:b:click"].propensity == 0.5
    assert all(e.policy_version == 3 and e.context.features == [0.5, 1.0] for e in out.experiences)
    assert by_id["req-1:c:no_click"].ts == T0 + 30
    assert out.duplicates == 3
    assert sorted((r.event.event_id, r.reason) for r in out.rejected) == [("clk-3", "not_shown"), ("clk-9", "orphan")]
    assert join.open_requests == 0 and join.parked == 0


def test_click_that_overtakes_its_impression_is_joined_within_grace():
    join = RewardJoin(JoinConfig(grace=5))
    early = join.click(click("c1", "u2", "x", T0 + 1, "req-2"))
    assert early.experiences == [] and early.rejected == [] and join.parked == 1
    out = join.impression(impression("req-2", "u2", ["x", "y"], T0))
    assert summary(out) == [("req-2:x:click", 1.0)] and join.parked == 0


def test_unmatched_click_becomes_an_orphan_only_after_grace():
    join = RewardJoin(JoinConfig(grace=5))
    join.click(click("c1", "u3", "x", T0, "nope"))
    assert join.advance(T0 + 4).rejected == []
    late = join.advance(T0 + 5.1)
    assert [(r.event.event_id, r.reason) for r in late.rejected] == [("c1", "orphan")]
    assert "within the window and grace" in late.rejected[0].detail


def test_click_past_grace_with_watermark_already_ahead_is_rejected_at_once():
    join = RewardJoin(JoinConfig(grace=5))
    join.advance(T0 + 100)
    out = join.click(click("c1", "u3", "x", T0, "nope"))
    assert [r.reason for r in out.rejected] == ["orphan"]


def test_click_without_request_id_joins_the_latest_matching_impression_in_window():
    join = RewardJoin(JoinConfig(click_window=30, grace=5))
    join.impression(impression("old", "u4", ["x"], T0))
    join.impression(impression("new", "u4", ["x", "y"], T0 + 10))
    assert summary(join.click(click("c1", "u4", "x", T0 + 12))) == [("new:x:click", 1.0)]
    # The user's newest impression did not show z: the click belongs to the older one that did.
    join.impression(impression("z-shown", "u4", ["z"], T0 + 11))
    join.impression(impression("newest", "u4", ["x"], T0 + 13))
    assert summary(join.click(click("c3", "u4", "z", T0 + 14))) == [("z-shown:z:click", 1.0)]
    # Outside every window: an orphan once grace has passed.
    join.click(click("c2", "u4", "y", T0 + 200))
    assert [r.reason for r in join.advance(T0 + 300).rejected] == ["orphan"]


def test_click_after_its_window_closed_is_late_not_a_contradiction_of_its_no_click():
    join = RewardJoin(JoinConfig(click_window=30, purchase_window=120, grace=5))
    join.impression(impression("r", "u6", ["x", "y"], T0))
    closed = join.advance(T0 + 40)
    assert summary(closed) == [("r:x:no_click", 0.0), ("r:y:no_click", 0.0)]
    for late in (click("c1", "u6", "x", T0 + 20, "r"), click("c2", "u6", "y", T0 + 34)):
        out = join.click(late)
        assert out.experiences == [] and [r.reason for r in out.rejected] == ["late"]
        assert "after the click window of request r closed" in out.rejected[0].detail
    assert join.click(click("c1", "u6", "x", T0 + 20, "r")).duplicates == 1    # a repeat, not a second letter
    # The purchase window is still open: a purchase is paid as its own part.
    assert [e.event_id for e in join.purchase(purchase("p1", "u6", "x", T0 + 50, 10.0, "r")).experiences] == ["r:x:purchase"]


def test_no_reward_part_is_counted_twice():
    join = RewardJoin(JoinConfig(click_window=30, grace=5))
    out = join.impression(impression("r", "u5", ["x", "y"], T0))
    out.extend(join.click(click("c1", "u5", "x", T0 + 1, "r")))
    out.extend(join.purchase(purchase("p1", "u5", "x", T0 + 5, 10.0, "r")))
    out.extend(join.purchase(purchase("p2", "u5", "x", T0 + 6, 10.0, "r")))  # second purchase event, same item
    out.extend(join.advance(T0 + 100))
    kinds = sorted((e.action, e.kind) for e in out.experiences)
    assert kinds == [("x", "click"), ("x", "purchase"), ("y", "no_click")]
    total_click = sum(e.reward_parts.click for e in out.experiences if e.action == "x")
    total_purchase = sum(e.reward_parts.purchase for e in out.experiences if e.action == "x")
    assert (total_click, total_purchase) == (1.0, 1.0)


def test_replaying_the_same_input_gives_the_same_experience_ids():
    def run() -> list[str]:
        join = RewardJoin()
        out = join.impression(impression("r", "u6", ["x", "y", "z"], T0))
        out.extend(join.click(click("c", "u6", "y", T0 + 3, "r")))
        out.extend(join.advance(T0 + 1000))
        return [e.event_id for e in out.experiences]

    assert run() == run() == ["r:y:click", "r:x:no_click", "r:z:no_click"]


def test_duplicate_impression_is_ignored_and_state_is_bounded():
    join = RewardJoin(JoinConfig(click_window=10, purchase_window=60, grace=1, dedupe_horizon=100))
    for i in range(100):
        join.impression(impression(f"r{i}", "u7", ["x"], T0 + i))
    assert join.impression(impression("r5", "u7", ["x"], T0 + 5)).duplicates == 1
    join.advance(T0 + 1000)
    assert join.open_requests == 0 and join.oldest_open_ts() is None
    assert len(join._seen) == 0 and not join._by_user


def test_a_request_id_cannot_open_again_while_its_forgotten_ids_still_deduplicate():
    """Forgotten, a request's record keeps its event ids under its request's key until the dedupe horizon:
    an impression reusing the id (a new event id, a replay or a forgery) in that time is a repeat, not a
    second request that would be paid again and overwrite what a restore needs."""
    join = RewardJoin(JoinConfig(click_window=10, purchase_window=60, grace=1, dedupe_horizon=100))
    join.impression(impression("r1", "u7", ["x"], T0))
    assert summary(join.click(click("c1", "u7", "x", T0 + 1, "r1"))) == [("r1:x:click", 1.0)]
    join.advance(T0 + 70)                     # past the purchase window: forgotten, still within the horizon
    again = msgspec.structs.replace(impression("r1", "u7", ["x"], T0 + 70), event_id="imp-r1-again")
    assert join.impression(again).duplicates == 1 and join.open_requests == 0
    join.advance(T0 + 200)                    # past the horizon: the id is free again
    assert join.impression(msgspec.structs.replace(again, event_id="imp-r1-later", ts=T0 + 200)).duplicates == 0

@pytest.mark.parametrize("weights,expected", [((1.0, 0.0, 0.0), 0.0), ((0.5, 3.0, 0.1), 3.0 + 0.1 * 20)])
def test_reward_weights_are_configurable(weights, expected):
    click_w, purchase_w, value_w = weights
    join = RewardJoin(JoinConfig(click_weight=click_w, purchase_weight=purchase_w, value_weight=value_w))
    join.impression(impression("r", "u8", ["x"], T0))
    click_out = join.click(click("c", "u8", "x", T0 + 1, "r"))
    assert click_out.experiences[0].reward == click_w
    out = join.purchase(purchase("p", "u8", "x", T0 + 2, 20.0, "r"))
    assert out.experiences[0].reward == pytest.approx(expected)


def test_finish_closes_every_window_and_judges_parked_events():
    join = RewardJoin(JoinConfig(click_window=30, purchase_window=3600, grace=5))
    join.impression(impression("req-1", "u1", ["a", "b"], T0))
    join.click(click("clk-1", "u1", "a", T0 + 2, "req-1"))
    join.advance(T0 + 10)
    assert join.click(click("clk-9", "u1", "z", T0 + 11, "req-404")).experiences == []   # parked, grace open
    out = join.finish()
    assert summary(out) == [("req-1:b:no_click", 0.0)]
    assert [(r.event.event_id, r.reason) for r in out.rejected] == [("clk-9", "orphan")]
    assert join.open_requests == 0 and join.finish().experiences == []


def test_memory_and_changelog_level_off_after_the_dedupe_horizon():
    """Traffic for many horizons: what the join remembers, in memory and in its compacted changelog, stops
    growing once ids older than the horizon expire (tombstones), while repeats inside it are still dropped."""
    import json

    from stream.join.processor import Coordinates, RewardProcessor

    config = JoinConfig(click_window=5, purchase_window=30, grace=1)     # horizon 30 + 1 + 60 = 91 s
    assert config.horizon == 91
    processor = RewardProcessor(config, clock=lambda: T0 + 1e6)
    processor.reached_end("purchases", 0)          # no purchases: that input holds event time back no more
    changelog: dict[bytes, bytes] = {}
    sizes = []
    n = 0
    for second in range(1200):                                           # ~13 horizons
        for _ in range(4):
            n += 1
            body = {"event_id": f"i{n}", "request_id": f"r{n}", "user_id": f"u{n % 300}", "ts": T0 + second,
                    "policy_version": 1, "shown": [{"item_id": "a", "position": 0, "propensity": 0.5}]}
            processor.handle("impressions", json.dumps(body).encode(), Coordinates("imp", 0, n, b"u"))
            if n % 3 == 0:
                click_body = {"event_id": f"c{n}", "request_id": f"r{n}", "user_id": f"u{n % 300}", "item_id": "a",
                              "ts": T0 + second + 1}
                processor.handle("clicks", json.dumps(click_body).encode(), Coordinates("clk", 0, n, b"u"))
            if n % 7 == 0:   # an orphan: remembered as refused until the horizon
                orphan = {"event_id": f"o{n}", "request_id": f"none{n}", "user_id": "x", "item_id": "a",
                          "ts": T0 + second}
                processor.handle("clicks", json.dumps(orphan).encode(), Coordinates("clk", 0, n, b"u"))
        if second % 10 == 0:
            for key, value in processor.changes(0):
                if value is None:
                    changelog.pop(key, None)
                else:
                    changelog[key] = value
        if second % 200 == 199:
            join = processor.joins[0]
            sizes.append((len(join._seen), len(changelog)))
    # Level after the first horizon: later samples are no bigger than the second one (+1% for the batch edge).
    assert all(seen <= sizes[1][0] * 1.01 and log <= sizes[1][1] * 1.01 for seen, log in sizes[2:]), sizes
    repeat = {"event_id": f"c{n - n % 3}", "request_id": f"r{n - n % 3}", "user_id": "u", "item_id": "a",
              "ts": T0 + 1200}
    assert processor.handle("clicks", json.dumps(repeat).encode(), Coordinates("clk", 0, n + 1, b"u")).experiences == []


def test_a_join_without_a_changelog_keeps_no_list_of_changes():
    """The faust engine's join is not checkpointed: nothing ever takes its changes, so recording them
    grew with traffic (every request id, orphan id and parked event for as long as the worker ran)."""
    join = RewardJoin(JoinConfig(click_window=10, purchase_window=60, grace=1, dedupe_horizon=100))
    for i in range(300):
        ts = T0 + 5 * i
        join.impression(impression(f"r{i}", f"u{i % 7}", ["x", "y"], ts))
        join.click(click(f"c{i}", f"u{i % 7}", "x", ts + 1, f"r{i}"))
        join.click(click(f"early{i}", f"u{i % 7}", "y", ts - 0.5, f"r{i + 1}"))   # overtakes its impression
        join.click(click(f"orphan{i}", "nobody", "z", ts, "missing"))
        join.advance(ts)
    assert join.open_requests < 20
    assert not (join._changed_requests or join._changed_parked or join._rejected or join._expired or join._leaving)
