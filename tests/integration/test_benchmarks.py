"""Each benchmark runs in a tiny configuration and reports what it measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_sim_throughput_benchmark_prints_json():
    done = subprocess.run([sys.executable, "-m", "bench.sim_throughput", "--requests", "5000",
                           "--batch", "1000", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["name"] == "sim_throughput" and out["params"]["requests"] == 5000
    assert out["metrics"]["requests_per_second"] > 0
    assert 0 < out["metrics"]["clicks_per_request"] < 5
    assert out["machine"]["cpus"] >= 1


def test_learner_throughput_benchmark_prints_json():
    done = subprocess.run([sys.executable, "-m", "bench.learner_throughput", "--seconds", "0.3", "--batch", "64",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["name"] == "learner_throughput" and out["params"]["batch"] == 64
    m = out["metrics"]
    assert m["samples_per_second"] > 0 and m["samples_per_second_with_meta"] > 0
    assert 0 < m["decisions_per_second_with_meta"] < m["samples_per_second_with_meta"]   # tasks add samples
    assert 0 < m["adapt_n20_p50_ms"] <= m["adapt_n20_p99_ms"]


def test_sequential_calibration_benchmark_prints_json():
    done = subprocess.run([sys.executable, "-m", "bench.sequential_calibration", "--runs", "20", "--requests", "2000",
                           "--look-every", "250", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    worlds = out["metrics"]["worlds"]
    assert out["name"] == "sequential_calibration" and out["params"]["runs"] == 20
    assert {"a_a_ctr_0.15", "a_b_0.15_vs_0.20"} <= set(worlds)
    assert worlds["a_a_ctr_0.15"]["right_verdict_share"] is None
    assert 0 <= worlds["a_b_0.15_vs_0.20"]["right_verdict_share"] <= 1


def test_replay_sampling_benchmark_prints_json():
    done = subprocess.run([sys.executable, "-m", "bench.replay_sampling", "--rows", "3000", "--window", "1000",
                           "--reservoir", "1000", "--batch", "250", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["name"] == "replay_sampling"
    assert out["metrics"]["recent"] == 1000 and out["metrics"]["reservoir"] == 1000
    assert out["metrics"]["uniform_samples_per_second"] > 0
    # 1,000 rows went in after the store was full, 4 batches that each evicted.
    assert out["metrics"]["full_store_inserts_per_second"] > 0 and out["params"]["insert_batch"] == 250
    assert out["metrics"]["anon_mb_when_full"] > 0 and out["metrics"]["anon_mb_at_end"] > 0


def test_join_consumers_benchmark_prints_json():
    done = subprocess.run([sys.executable, "-m", "bench.join_consumers", "--requests", "300", "--mode", "batch",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout)["metrics"]
    assert m["events"] > 300 and m["batch_events_per_second"] > 0
    assert 0 < m["batch_experiences"] < m["events"]


def test_stream_benchmark_writes_every_figure(tmp_path):
    out = tmp_path / "stream.json"
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "stream", "--requests", "4000", "--paced-seconds",
                           "2", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads(out.read_text())["metrics"]
    assert m["join_experiences"] == m["experiences_stored"] == m["experiences_expected"] > 0
    assert m["join_events_per_s"] > 0 and m["end_to_end_events_per_s"] > 0 and m["experiences_per_s"] > 0
    assert set(m["end_to_end_cpu_us_per_event"]) >= {"process", "replay", "broker", "producer"}
    assert m["paced_clicks_stored"] == m["paced_click_experiences"] > 0
    assert 0 < m["paced_click_to_experience_p50_s"] <= m["paced_click_to_experience_p99_s"]
    assert 0 < m["paced_click_to_stored_p50_s"] <= m["paced_click_to_stored_p99_s"]
    assert "join alone" in done.stdout


def test_scorer_latency_benchmark_prints_json():
    done = subprocess.run([sys.executable, "-m", "bench.scorer_latency", "--calls", "100", "--items", "150", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    m = out["metrics"]
    assert out["name"] == "scorer_latency" and out["params"]["calls"] == 100
    for where in ("inprocess", "http"):
        for n in (100, 1000):
            assert 0 < m[f"{where}_{n}_p50_ms"] <= m[f"{where}_{n}_p99_ms"] <= m[f"{where}_{n}_max_ms"]
    assert m["swaps"] == 10 and m["failed_during_swaps"] == 0 and m["versions_served_after"] == 109


@pytest.mark.parametrize("transport", ["http", "kafka"])
def test_scorer_transport_benchmark_writes_json(tmp_path, transport):
    out = tmp_path / "scorer.json"
    # A small catalogue: the scorer embeds every item's text before it serves, and that is most of the run.
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "scorer", "--transport", transport, "--rate", "40",
                           "--seconds", "2", "--items", "60", "--candidates", "20", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads(out.read_text())["metrics"]
    assert m["requests"] == 80 and m["answered"] == 80 and m["errors"] == 0
    assert 0 < m["request_to_response_p50_ms"] <= m["request_to_response_p99_ms"]
    assert f"{transport}: offered 40/s" in done.stdout


def test_quality_benchmark_writes_json_and_a_plot(tmp_path):
    out_json, out_png = tmp_path / "quality.json", tmp_path / "quality.png"
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "quality", "--requests", "600", "--seeds", "1",
                           "--json", str(out_json), "--plot", str(out_png)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(out_json.read_text())
    assert set(out) == {"name", "metrics", "params", "machine"} and out["name"] == "quality"
    policies = out["metrics"]["by_policy"]
    assert set(policies) == {"random", "popularity", "vw_squarecb", "vw_epsilon", "ours", "ours_no_meta",
                             "ours_no_anti_forgetting", "oracle"}
    oracle = policies["oracle"]
    assert oracle["regret_vs_oracle"]["mean"] == 0
    for name, m in policies.items():
        assert m["cumulative_reward"]["mean"] >= 0
        assert 0 <= m["mean_expected_reward"]["mean"] <= oracle["mean_expected_reward"]["mean"] + 1e-9, name
        assert m["regret_vs_oracle"]["mean"] >= 0 and m["decisions_per_second"]["mean"] > 0
        assert {"ctr_before", "ctr_drift", "ctr_after", "cold_start_reward_first_5",
                "returning_segment_relative"} <= set(m)
    assert len(out["metrics"]["curves"]["ours"]) == 100
    assert out_png.stat().st_size > 10_000
    assert "vw_squarecb" in done.stdout and "ours_no_meta" in done.stdout     # the summary table


def test_learner_benchmark_compares_with_vowpal_wabbit(tmp_path):
    out_json = tmp_path / "learner.json"
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "learner", "--examples", "512", "--device", "cpu",
                           "--json", str(out_json)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(out_json.read_text())
    m = out["metrics"]
    assert out["name"] == "learner_vs_vw" and out["params"]["examples"] == 512
    assert m["vw_samples_per_second"] > 0 and m["ours_cpu_samples_per_second"] > 0
    assert m["ours_cpu_vs_vw"] == round(m["ours_cpu_samples_per_second"] / m["vw_samples_per_second"], 2)
    assert "ours_cpu_with_meta_vs_vw" in m


def test_unknown_policies_are_refused_with_the_list():
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "quality", "--policies", "ours,bandit"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "unknown policies ['bandit']" in done.stderr


def test_bench_all_collects_results_in_one_stable_layout(tmp_path):
    # Every benchmark of the suite has a tiny-configuration test of its own above (freshness in
    # tests/e2e); this one checks the collection: one JSON list, one stable record per benchmark.
    from bench.cli import SUITE

    out = tmp_path / "all.json"
    only = ["sim_throughput", "replay_sampling", "learner_throughput"]
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "all", "--quick", "--only", ",".join(only),
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == only
    for r in results:
        assert set(r) == {"name", "metrics", "params", "machine"} and r["metrics"], r["name"]
    assert set(SUITE) == {"quality", "learner_vs_vw", "learner_throughput", "sim_throughput", "replay_sampling",
                          "sequential_calibration", "stream", "scorer_latency", "scorer_http", "scorer_kafka", "freshness"}
    refused = subprocess.run([sys.executable, "-m", "stream", "bench", "all", "--only", "nope", "--json",
                              str(tmp_path / "x.json")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "unknown benchmarks ['nope']" in refused.stderr


def test_quality_takes_seed_lists_and_a_drift_and_reports_paired_differences(tmp_path):
    out_json = tmp_path / "quality.json"
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "quality", "--requests", "400", "--seeds", "5,7",
                           "--drift", "0.2,0.7", "--policies", "ours,ours_no_meta", "--json", str(out_json)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(out_json.read_text())
    assert out["params"]["seeds_used"] == [5, 7] and out["params"]["stream"]["drift"] == [0.2, 0.7]
    pair = out["metrics"]["paired"]["ours - ours_no_meta"]["cumulative_reward"]
    assert pair["seeds"] == 2 and pair["se"] >= 0
    diffs = [a["cumulative_reward"] - b["cumulative_reward"]
             for a, b in zip(out["metrics"]["per_seed"]["ours"], out["metrics"]["per_seed"]["ours_no_meta"])]
    assert abs(pair["mean"] - sum(diffs) / 2) < 1e-6
    assert "paired difference" in done.stdout


def write_tiny_movielens(folder, users: int = 30, movies: int = 40, ratings: int = 900, seed: int = 0) -> None:
    """A MovieLens-format folder made in the test: users who like one of two genres."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir()
    genres = ["Comedy", "Drama|Thriller"]
    with (folder / "movies.csv").open("w") as f:
        f.write("movieId,title,genres\n")
        for m in range(movies):
            f.write(f'{m + 1},"Movie {m} ({1990 + m % 20})",{genres[m % 2]}\n')
    with (folder / "ratings.csv").open("w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for i in range(ratings):
            u, m = int(rng.integers(users)), int(rng.integers(movies))
            liked = (u % 2) == (m % 2)
            rating = float(rng.choice([4.0, 5.0]) if rng.random() < (0.8 if liked else 0.2) else rng.choice([1.0, 3.0]))
            f.write(f"{u + 1},{m + 1},{rating},{1_000_000_000 + 60 * i}\n")


def test_movielens_benchmark_runs_every_row_on_a_file_of_that_format(tmp_path):
    data = tmp_path / "ml"
    write_tiny_movielens(data)
    out_json = tmp_path / "ml.json"
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "movielens", "--data", str(data), "--periods", "3",
                           "--json", str(out_json)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(out_json.read_text())
    assert out["name"] == "movielens" and out["params"]["ratings"] == 900 and out["params"]["periods"] == 3
    rows = out["metrics"]["by_policy"]
    assert set(rows) == {"ours", "ours_no_meta", "ours_no_anti_forgetting", "ours_no_item_evidence", "fine_tune",
                         "full_retrain", "full_retrain_adapted", "vw", "river_fm", "lenskit_mf", "lenskit_mf_fold_in", "sasrec",
                         "popularity"}
    for name, m in rows.items():
        assert 0.0 <= m["mean_auc"] <= 1.0, name
        # The LensKit rows predict stars, not probabilities: no log loss for them.
        assert m["mean_log_loss"] > 0 if not name.startswith("lenskit") else math.isnan(m["mean_log_loss"]), name
        assert len(out["metrics"]["runs"][name]["per_period"]) == 2           # period 0 only trains
        assert len(out["metrics"]["runs"][name]["bwt_per_period"]) == 2
    # The planted taste is learnable (VW, learning online on the text embedding per user, finds it), and ours
    # learns more of it than item popularity does. This tiny file is far too small for ours to do well:
    # 8 updates a period (BENCHMARKS.md has the real data).
    assert rows["vw"]["mean_auc"] > 0.65
    assert rows["ours"]["mean_auc"] > rows["popularity"]["mean_auc"] + 0.03
    assert "new users" in done.stdout


def test_a_baseline_is_tuned_on_the_benchmarks_own_protocol(tmp_path):
    data = tmp_path / "ml"
    write_tiny_movielens(data)
    done = subprocess.run([sys.executable, "-m", "bench.tune_movielens", "--data", str(data), "--row", "lenskit_mf_fold_in",
                           "--grid", '{"features": [4, 8]}', "--limit", "600", "--periods", "3", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    trials = out["metrics"]["trials"]
    assert [t["settings"] for t in trials] == [{"features": 4}, {"features": 8}] and out["params"]["ratings"] == 600
    assert out["metrics"]["best_mean_auc"] == max(t["mean_auc"] for t in trials)
    refused = subprocess.run([sys.executable, "-m", "bench.tune_movielens", "--data", str(data), "--row", "ours",
                              "--grid", '{"dim": [4]}'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "cannot be tuned" in refused.stderr
    unknown = subprocess.run([sys.executable, "-m", "bench.tune_movielens", "--data", str(data), "--row", "sasrec",
                              "--grid", '{"depth": [4]}'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "sasrec has no setting depth; it takes dim" in unknown.stderr


def test_movielens_benchmark_says_what_is_wrong_with_the_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stream", "bench", "movielens", "--data", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "ratings.csv not found" in done.stderr


def test_broker_listing_benchmark_times_fetches_as_a_partition_fills():
    done = subprocess.run([sys.executable, "-m", "bench.broker_listing", "--steps", "100,300", "--repeats", "5", "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["name"] == "broker_listing" and out["params"]["steps"] == [100, 300]
    rows = out["metrics"]["by_step"]
    assert [r["batches_in_partition_0"] for r in rows] == [100, 300]
    assert all(r["fetch_ms_partition_0_tail"] > 0 and r["fetch_ms_other_partition_tail"] > 0 for r in rows)
    assert all(set(r["tail_answered_within_wait_ms"]) == {"10", "20", "50"} for r in rows)
    assert math.isfinite(out["metrics"]["ms_per_1000_batches_same_partition"])


def test_broker_listing_refuses_steps_that_do_not_rise():
    done = subprocess.run([sys.executable, "-m", "bench.broker_listing", "--steps", "300,100"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--steps must be rising" in done.stderr
