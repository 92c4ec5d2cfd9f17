"""The freshness benchmark runs the loop in a tiny configuration and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_freshness_benchmark_prints_json():
    done = subprocess.run([sys.executable, "-m", "bench.freshness", "--duration", "20", "--rate", "40",
                           "--publish-seconds", "2", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    m = out["metrics"]
    assert out["name"] == "freshness" and out["params"]["publish_seconds"] == 2
    assert m["versions_published"] >= 2 and m["failed_requests"] == 0
    assert m["clicks"] > 0 and 0 <= m["click_to_live_p50_s"] <= m["click_to_live_p99_s"]
