"""The README's demo command runs end to end and stops everything it started."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest

from stream.demo.prometheus_server import HOW_TO_GET_IT
from stream.kafka.broker import free_port
from tests.conftest import cli_command


def test_demo_walkthrough_runs_on_its_own_embedded_broker():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    done = subprocess.run(cli_command("demo", "--walkthrough", "--json"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["embedded_broker"] is True
    assert summary["messages_on_topics"] == {"clicks": 3, "purchases": 1, "impressions": 3, "items": 5}
    assert summary["dead_letters"] == {"malformed_json": 1, "schema": 2}
    host, port = summary["bootstrap_servers"].split(":")
    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0, "demo left its broker running"


needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason=f"`make test` installs Debian's prometheus package. {HOW_TO_GET_IT}")


@needs_prometheus
def test_demo_with_two_arms_and_prometheus_scrapes_every_role_and_stops_it(tmp_path):
    """Two arms, so two learners: both scraped, both arms served and judged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    port = free_port()
    done = subprocess.run(cli_command("demo", "--prometheus", "--prometheus-port", str(port), "--duration", "20",
                                      "--rate", "40", "--arms", "ours,ours_online_only",
                                      "--plot", str(tmp_path / "p.png"), "--json"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Prometheus at http://127.0.0.1:{port}" in done.stderr
    report = json.loads(done.stdout)
    experiment = report["experiment"]
    assert [arm["arm"] for arm in experiment["arms"]] == ["ours", "ours_online_only"]
    assert all(arm["requests"] > 0 for arm in experiment["arms"])
    assert experiment["comparison"]["of"] == "ours_online_only - ours"
    assert set(report["arm_expected_reward"]) == {"ours", "ours_online_only"}
    assert (tmp_path / "p.png").stat().st_size > 0
    prom = report["prometheus"]
    assert prom["targets_up"] == ["learner", "learner", "processor", "replay", "scorer"]
    assert prom["policy_version"]["scorer"] >= 1 and prom["policy_version"]["learner"] >= 1
    assert prom["scorer_http_p99_seconds"] is not None
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "demo left Prometheus running"


def test_demo_with_prometheus_says_how_to_get_it_when_it_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env["PATH"] = str(tmp_path)         # nothing on PATH: no prometheus
    done = subprocess.run(cli_command("demo", "--prometheus", "--duration", "5"), env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "apt-get install prometheus" in done.stderr and "prometheus.io/download" in done.stderr
