"""Probe sets rotate by period, keep the last few, and report forgetting per probe age."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from stream import schemas
from stream.learner.forgetting_probes import ForgettingProbes, ProbeConfig

T0 = 1_760_000_000.0


def decision(i: int, position: int = 0, with_candidates: bool = True) -> schemas.Experience:
    return schemas.Experience(
        event_id=f"r{i}:a:click", request_id=f"r{i}", user_id=f"u{i % 3}", action="a", position=position,
        propensity=0.5, reward=1.0, reward_parts=schemas.RewardParts(click=1.0), kind="click", policy_version=1,
        ts=T0 + i, candidates=["a", "b"] if with_candidates else None)


def fill(probes: ForgettingProbes, start: float, n: int, tag: int) -> None:
    for i in range(n):
        probes.offer(decision(tag * 1000 + i), start + i * 0.01)


def test_periods_become_probe_sets_and_only_full_decisions_count():
    probes = ForgettingProbes(ProbeConfig(period_seconds=10, keep=2, min_decisions=3, max_decisions=5))
    fill(probes, T0, 8, 1)                                   # capped at max_decisions
    probes.offer(decision(99, position=1), T0 + 1)           # not a full decision
    probes.offer(decision(98, with_candidates=False), T0 + 1)
    assert len(probes.current) == 5 and probes.sets == []
    probes.rotate(T0 + 10)
    assert [len(d) for _, d in probes.sets] == [5]
    fill(probes, T0 + 10, 2, 2)                              # too few: dropped at the next rotation
    probes.rotate(T0 + 20)
    assert len(probes.sets) == 1
    fill(probes, T0 + 20, 4, 3)
    probes.rotate(T0 + 30)
    fill(probes, T0 + 30, 4, 4)
    probes.rotate(T0 + 40)
    assert [start for start, _ in probes.sets] == [T0 + 20, T0 + 30]   # keep=2, oldest first


def test_forgetting_is_the_share_of_the_best_value_lost_per_probe_age():
    probes = ForgettingProbes(ProbeConfig(period_seconds=10, keep=3, min_decisions=1))
    fill(probes, T0, 3, 1)
    probes.rotate(T0 + 10)
    fill(probes, T0 + 10, 3, 2)
    probes.rotate(T0 + 20)
    old, new = (probes.sets[0][1], probes.sets[1][1])
    values = {id(old): 0.8, id(new): 0.5}
    assert probes.score(lambda d: values[id(d)]) == {"1": 0.0, "2": 0.0}
    values[id(old)] = 0.6                                    # the old period got worse by a quarter
    values[id(new)] = 0.7
    report = probes.score(lambda d: values[id(d)])
    assert report == {"1": 0.0, "2": pytest.approx(0.25)}
    assert REGISTRY.get_sample_value("recsys_learner_forgetting_ratio", {"probe": "2"}) == pytest.approx(0.25)
    assert REGISTRY.get_sample_value("recsys_learner_probe_value", {"probe": "1"}) == pytest.approx(0.7)


def test_state_survives_a_checkpoint_round_trip():
    probes = ForgettingProbes(ProbeConfig(period_seconds=10, keep=3, min_decisions=1))
    fill(probes, T0, 3, 1)
    probes.rotate(T0 + 10)
    fill(probes, T0 + 10, 2, 2)
    probes.score(lambda d: 0.9)
    restored = ForgettingProbes(probes.config)
    restored.load_state_dict(probes.state_dict())
    assert restored.period_start == probes.period_start
    assert [e.event_id for e in restored.current] == [e.event_id for e in probes.current]
    assert [(s, [e.event_id for e in d]) for s, d in restored.sets] == \
        [(s, [e.event_id for e in d]) for s, d in probes.sets]
    assert restored.score(lambda d: 0.45) == {"1": pytest.approx(0.5)}


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError):
        ProbeConfig(period_seconds=0)
    with pytest.raises(ValueError):
        ProbeConfig(min_decisions=10, max_decisions=5)
