"""The benchmarks' own logic: seed lists, paired differences, ranking metrics, period splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.movielens import log_loss
from bench.quality import paired_differences, parse_drift, parse_seeds
from models.ranking import auc, gauc


def test_seeds_are_a_count_a_list_or_a_range():
    assert parse_seeds("3") == (1, 2, 3)
    assert parse_seeds("41,42,43") == (41, 42, 43)
    assert parse_seeds("41-45") == (41, 42, 43, 44, 45)
    assert parse_seeds("7,") == (7,)
    for bad in ("0", "a", "5-3", "4,4", "-2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    assert parse_drift("0.2,0.7") == (0.2, 0.7)
    with pytest.raises(ValueError, match="--drift"):
        parse_drift("0.2")


def test_paired_differences_are_per_seed_with_their_standard_error():
    rows = lambda values: [{"cumulative_reward": v, "cold_start_reward_first_5": 0.5, "cold_start_reward_first_10": 0.5,  # noqa: E731
                            "returning_segment_relative": 1.0, "returning_segment_share_of_oracle_after": 0.5}
                           for v in values]
    out = paired_differences({"ours": rows([10, 12, 14]), "vw_squarecb": rows([9, 10, 11])})
    pair = out["ours - vw_squarecb"]["cumulative_reward"]
    diffs = np.array([1, 2, 3])
    assert pair["mean"] == pytest.approx(2.0) and pair["wins"] == 3 and pair["seeds"] == 3
    assert pair["se"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(3))
    assert pair["z"] == pytest.approx(2.0 / pair["se"])
    assert "ours - ours_no_meta" not in out


def test_auc_counts_ties_half_and_needs_both_classes():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.1, 0.2])) == 0.5
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    users = np.array([0, 0, 1, 1, 2])
    labels = np.array([0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.5])
    assert gauc(users, labels, scores) == pytest.approx(0.5)       # user 0 perfect, user 1 reversed, user 2 skipped
    assert log_loss(np.array([1.0]), np.array([1.0])) < 1e-3


def test_reports_of_disjoint_seeds_merge_into_one():
    from bench.quality import merge_reports

    def report(seeds, rewards):
        per_seed = {"ours": [{"cumulative_reward": r, "cold_start_reward_first_5": 0.5, "cold_start_reward_first_10": 0.5,
                              "returning_segment_relative": 1.0, "returning_segment_share_of_oracle_after": 0.5}
                             for r in rewards]}
        return {"name": "quality", "params": {"stream": {"requests": 10}, "policies": ["ours"], "seeds": len(seeds),
                                             "seeds_used": list(seeds)},
                "metrics": {"per_seed": per_seed, "curves": {"ours": [float(rewards[0])] * 3}}}

    merged = merge_reports([report([1, 2], [10.0, 20.0]), report([3], [60.0])])
    assert merged["params"]["seeds_used"] == [1, 2, 3] and merged["params"]["seeds"] == 3
    assert merged["metrics"]["by_policy"]["ours"]["cumulative_reward"]["mean"] == pytest.approx(30.0)
    assert merged["metrics"]["curves"]["ours"] == pytest.approx([(2 * 10.0 + 60.0) / 3] * 3, abs=1e-3)
    with pytest.raises(ValueError, match="share seeds"):
        merge_reports([report([1], [1.0]), report([1], [2.0])])


def test_the_agent_plans_a_turn_in_steps_and_caps_a_backlog():
    from models.agent import Agent, AgentConfig
    from models.policy import PolicyConfig

    agent = Agent(PolicyConfig(text_dim=8, dim=4, hidden=4, item_buckets=16, user_buckets=16, fast_dim=4),
                  AgentConfig(update_size=32, max_updates_per_turn=8, max_turn=2048))
    assert agent.plan(0) == [] and agent.plan(10) == [10]
    assert agent.plan(100) == [34, 34, 32]
    big = agent.plan(100_000)
    assert len(big) == 8 and sum(big) == 2048
    assert agent.replay_count(32) == 32
    # A caller's time budget takes the same records in fewer, bigger steps; never none, never more than the plan.
    assert agent.plan(100, max_steps=1) == [100]
    assert agent.plan(100_000, max_steps=2) == [1024, 1024]
    assert agent.plan(100, max_steps=0) == [100] and agent.plan(100, max_steps=50) == [34, 34, 32]


def test_the_soak_fits_each_role_from_its_warm_up_on():
    from bench.soak import slopes_after

    mb = 2**20
    rng = np.random.default_rng(0)
    times = np.arange(0.0, 600.0, 10.0)
    samples = {
        # fills for 300 s, then flat with noise: a slope from 300 s on is zero within its error
        "filling": [(t, int((500 + min(t, 300) / 10 + rng.normal(0, 0.5)) * mb)) for t in times],
        "leaking": [(t, int((500 + t / 60 * 2.0) * mb)) for t in times],    # 2 MB a minute throughout
    }
    early, late = slopes_after(samples, 120), slopes_after(samples, 300)
    assert early["filling"]["mb_per_min"] > 2
    assert abs(late["filling"]["mb_per_min"]) < 2 * late["filling"]["se"] + 0.05
    assert late["leaking"]["mb_per_min"] == pytest.approx(2.0, abs=0.01)
    assert late["filling"]["samples"] == 30 and early["filling"]["samples"] == 48
    assert slopes_after({"short": samples["leaking"][:2]}, 0)["short"]["mb_per_min"] is None


def test_the_soak_reports_each_processs_cpu_per_window():
    from bench.soak import cores_by_window

    # Half a core for 300 s, then a whole one: a cost that grows over the run shows in its window.
    samples = {"learn": [(float(t), 0.5 * min(t, 300) + max(0, t - 300)) for t in range(0, 601, 10)],
               "idle": [(0.0, 3.0), (300.0, 3.0), (600.0, 3.0)]}
    out = cores_by_window(samples, 300.0)
    assert out["learn"] == [[0.0, 0.5], [300.0, 1.0]]
    assert out["idle"] == [[0.0, 0.0], [300.0, 0.0]]
    assert cores_by_window({"one": [(5.0, 1.0)]}, 300.0) == {"one": []}


def test_the_soaks_robust_error_covers_a_flat_role_that_swings_for_minutes():
    """Memory that swings for minutes at a time (AR(1) noise, 0.9 from one 10 s sample to the next)
    around a flat level: the textbook error calls most such runs a trend; the robust one far fewer."""
    from bench.soak import slope

    rng = np.random.default_rng(5)
    times = np.arange(0.0, 2400.0, 10.0)
    textbook = robust = 0
    runs = 200
    for _ in range(runs):
        noise = np.zeros(len(times))
        for i in range(1, len(times)):
            noise[i] = 0.9 * noise[i - 1] + rng.normal()
        fit = slope(list(times), list((500 + noise) * 2**20))
        textbook += abs(fit["mb_per_min"]) > 2 * fit["se"]
        robust += abs(fit["mb_per_min"]) > 2 * fit["se_hac"]
        assert fit["hac_lags"] == 20
    assert textbook / runs > 0.4
    assert robust / runs < 0.3
    # With independent noise both agree, and a real trend stands out under either.
    white = slope(list(times), list((500 + rng.normal(size=len(times))) * 2**20))
    assert white["se_hac"] == pytest.approx(white["se"], rel=0.35)
    rising = slope(list(times), list((500 + times / 60 * 0.5 + noise) * 2**20))
    assert rising["mb_per_min"] > 4 * rising["se_hac"]


def test_scorer_benchmark_refuses_bad_arguments_before_it_starts_anything():
    """Both entries (argparse and `recsys-stream bench scorer`) rely on measure() to check them."""
    from bench.scorer_transport import measure

    for kwargs, field in (({"transport": "grpc"}, "transport"), ({"rate": 0.5}, "rate"), ({"seconds": 0}, "seconds"),
                          ({"items": 0}, "items"), ({"items": 20, "candidates": 50}, "candidates"),
                          ({"candidates": 1001, "items": 2000}, "candidates"), ({"clients": 65}, "clients"),
                          ({"partitions": 0}, "partitions")):
        with pytest.raises(ValueError, match=field):
            measure(**kwargs)
