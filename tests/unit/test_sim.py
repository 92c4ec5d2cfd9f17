"""The simulated world: seeded, consistent ground truth, drift, cold start, valid traffic."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from sim.behaviour import BehaviourModel
from sim.catalog import TOPIC_NAMES, VOCABULARY
from sim.traffic import (
    TrafficConfig,
    generate,
    sorted_by_time,
    uniform_slate_propensities,
)
from sim.world import Drift, World, WorldConfig
from stream import schemas


def run(world: World, n: int, k: int = 20, slate: int = 5):
    users = world.sample_users(n)
    slates = world.candidates(n, k)[:, :slate]
    return users, slates, world.feedback(users, slates)


def test_same_seed_same_world_and_feedback():
    a, b = World(WorldConfig(seed=7)), World(WorldConfig(seed=7))
    assert a.catalog.titles == b.catalog.titles
    ua, sa, fa = run(a, 500)
    ub, sb, fb = run(b, 500)
    assert (ua == ub).all() and (sa == sb).all() and (fa.clicks == fb.clicks).all()
    assert not (World(WorldConfig(seed=8)).catalog.titles == a.catalog.titles)


def test_item_text_comes_from_its_topic():
    world = World(WorldConfig(seed=1))
    for i in range(50):
        nouns, _ = VOCABULARY[TOPIC_NAMES[world.catalog.main_topic[i]]]
        assert any(noun in world.catalog.titles[i] for noun in nouns)
        assert TOPIC_NAMES[world.catalog.main_topic[i]] in world.catalog.descriptions[i]


def test_empirical_click_rates_match_ground_truth():
    world = World(WorldConfig(seed=2))
    users = np.repeat(world.sample_users(50), 2000)
    slates = np.repeat(world.candidates(50, 5), 2000, axis=0)
    truth = world.click_probability(users, slates)
    clicks = world.feedback(users, slates).clicks
    empirical = clicks.reshape(50, 2000, 5).mean(axis=1)
    expected = truth.reshape(50, 2000, 5)[:, 0, :]
    assert np.abs(empirical - expected).max() < 0.05  # 2000 draws: sd <= 0.011


def test_position_bias_and_price_sensitivity():
    model = BehaviourModel()
    assert (np.diff(model.examination(np.arange(5))) < 0).all()
    cheap, dear = model.purchase_given_click(np.array([1.0, 1.0]), np.array([10.0, 500.0]))
    assert cheap > dear + 0.1


def test_oracle_clearly_beats_random_and_regret_is_nonnegative():
    world = World(WorldConfig(seed=3))
    users = world.sample_users(5000)
    cands = world.candidates(5000, 20)
    random_value = world.expected_reward(users, cands[:, :5])
    oracle_value = world.expected_reward(users, world.oracle_slates(users, cands, 5))
    assert (oracle_value >= random_value - 1e-6).all()
    assert oracle_value.mean() > 1.5 * random_value.mean()


def test_drift_shifts_one_segment_and_returns_exactly():
    drift = Drift(segment=1, start=1000, end=2000)
    world = World(WorldConfig(seed=4, drifts=(drift,)))
    before = world.users.preference.copy()
    seg = world.users.segment == 1
    world.advance(1000)
    assert world.active_drifts() == {drift}
    assert not np.allclose(world.users.preference[seg], before[seg])
    assert np.array_equal(world.users.preference[~seg], before[~seg])
    world.advance(1000)
    assert world.active_drifts() == frozenset()
    assert np.array_equal(world.users.preference, before)


def test_an_away_segment_makes_no_requests_and_comes_back_unchanged():
    from bench.quality_stream import StreamConfig, drifts_of

    config = StreamConfig(requests=4000, drift=(0.25, 0.5), scenario="away")
    world = World(WorldConfig(seed=4, drifts=drifts_of(config, 1000, 2000)))
    before = world.users.preference.copy()
    away = world.users.segment == 0
    assert (world.users.segment[world.sample_users(500)] == 0).any()
    world.advance(1000)
    assert not (world.users.segment[world.sample_users(2000)] == 0).any()
    assert np.array_equal(world.users.preference[away], before[away])     # its tastes stay as they were
    assert not np.allclose(world.users.preference[~away], before[~away])  # everyone else's move
    world.advance(1000)
    assert (world.users.segment[world.sample_users(500)] == 0).any()
    assert np.array_equal(world.users.preference[away], before[away])
    assert not np.allclose(world.users.preference[~away], before[~away])  # for good
    with pytest.raises(ValueError):
        Drift(segment=0, start=1, end=2, kind="vanish")


def test_new_users_arrive_and_get_their_first_requests_soon():
    world = World(WorldConfig(seed=5, n_users=500, new_users=100, horizon=10_000))
    assert len(world.users.arrived(0)) == 500
    for _ in range(10):
        run(world, 1000)
    assert len(world.users.arrived(world.step)) == 600
    newcomers = world.users.arrival_step > 0
    # Boosted through their first requests: most newcomers were served their cold-start window.
    assert (world.interactions[newcomers] >= 5).mean() > 0.8


def test_new_items_are_released_over_time():
    world = World(WorldConfig(seed=6, n_items=100, new_items=50, horizon=10_000))
    assert len(world.catalog.released(0)) == 100
    early = set(world.candidates(2000, 20).ravel())
    world.advance(10_000)
    late = set(world.candidates(2000, 20).ravel())
    assert max(early) < 100 and max(late) >= 100


def test_uniform_slates_are_uniform():
    world = World(WorldConfig(seed=9, n_items=30))
    slates = world.candidates(60_000, 10)[:, :3]
    counts = np.bincount(slates[:, 0], minlength=30)
    expected = len(slates) / 30
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 60  # chi-square, 29 dof: p ~ 0.0006 at 60
    assert all(len(set(row)) == 3 for row in slates[:100])


def test_traffic_records_satisfy_the_topic_contracts():
    world = World(WorldConfig(seed=10))
    config = TrafficConfig(clicks_without_request_id=0.2)
    events = sorted_by_time(generate(world, 400, start_ts=1_763_900_000.0, config=config))
    kinds = Counter(t for t, _ in events)
    assert kinds["impressions"] == 400 and kinds["clicks"] > 50 and kinds["purchases"] > 5
    impressions = {}
    for topic, record in events:
        event = schemas.decode(topic, json.dumps(record).encode())
        if topic == "impressions":
            impressions[event.request_id] = event
            assert [s.propensity for s in event.shown] == pytest.approx(uniform_slate_propensities(20, 5))
    assert [e[1]["ts"] for e in events] == sorted(e[1]["ts"] for e in events)
    anonymous = [r for t, r in events if t == "clicks" and "request_id" not in r]
    assert 0.1 < len(anonymous) / kinds["clicks"] < 0.3
    for topic, record in events:
        if topic == "clicks" and "request_id" in record:
            imp = impressions[record["request_id"]]
            assert record["item_id"] in {s.item_id for s in imp.shown}
            assert record["ts"] > imp.ts
