"""`recsys-stream bench all --quick` runs every benchmark in a tiny configuration into one JSON file."""

from __future__ import annotations

import json
import os
import subprocess

from bench.cli import SUITE
from tests.conftest import REPO, cli_command


def test_bench_all_quick_writes_one_result_per_benchmark(tmp_path):
    out = tmp_path / "all.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    done = subprocess.run(cli_command("bench", "all", "--quick", "--json", str(out)), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == ["quality", "learner_vs_vw", "learner_throughput", "sim_throughput",
                                            "replay_sampling", "stream_throughput", "scorer_latency", "freshness"]
    assert len(results) == len(SUITE)
    for r in results:
        assert set(r) == {"name", "metrics", "params", "machine"}, r["name"]
        assert r["metrics"] and r["machine"]["cpus"] >= 1, r["name"]
