"""A real Prometheus server scrapes a running scorer and reward-join processor; its HTTP API answers
queries for the scorer latency histogram and the live policy version."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from stream.demo.prometheus_server import HOW_TO_GET_IT, LocalPrometheus
from stream.kafka.broker import free_port
from tests.conftest import cli_command
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason=f"`make test` installs Debian's prometheus package. {HOW_TO_GET_IT}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def wait_until(condition, timeout: float, what: str):
    return wait_for(condition, timeout, what, interval=0.5, ignore=(OSError,))


def test_prometheus_scrapes_scorer_and_processor(cli_env, topics, tmp_path):
    from models.policy import PolicyConfig, TwoTowerPolicy
    from stream.config import Settings
    from stream.policy.bus import PolicyPublisher

    score_port, process_port, prom_port = free_port(), free_port(), free_port()
    roles = [
        subprocess.Popen(cli_command("score", "--port", str(score_port), "--no-kafka-requests"), env=cli_env,
                         stdout=subprocess.DEVNULL, stderr=(tmp_path / "score.log").open("w")),
        subprocess.Popen(cli_command("process", "--metrics-port", str(process_port)), env=cli_env,
                         stdout=subprocess.DEVNULL, stderr=(tmp_path / "process.log").open("w")),
    ]
    prometheus = LocalPrometheus({"scorer": [f"127.0.0.1:{score_port}"],
                                  "processor": [f"127.0.0.1:{process_port}"]}, tmp_path / "prometheus", prom_port,
                                 scrape_interval="1s")
    try:
        prometheus.start()
        query = prometheus.query
        scorer = f"http://127.0.0.1:{score_port}"
        wait_until(lambda: get_json(f"{scorer}/healthz")["status"] == "ok", 120, "the scorer")
        PolicyPublisher(Settings(bootstrap_servers=cli_env["RECSYS_BOOTSTRAP_SERVERS"],
                                 topic_prefix=cli_env["RECSYS_TOPIC_PREFIX"],
                                 hmac_key=cli_env["RECSYS_HMAC_KEY"]), "test").publish(
            TwoTowerPolicy(PolicyConfig()), 1)
        wait_until(lambda: get_json(f"{scorer}/healthz")["policy_version"] == 1, 60, "the scorer to load v1")
        body = json.dumps({"user_id": "u1", "candidates": ["a", "b", "c"], "k": 2}).encode()
        for _ in range(20):
            req = urllib.request.Request(f"{scorer}/score", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200

        up = wait_until(lambda: len(query("up == 1")) == 2 and query("up == 1"), 60, "both targets up")
        assert {r["metric"]["job"] for r in up} == {"scorer", "processor"}
        # The histogram as scraped: all 20 requests counted once a scrape after them has landed.
        wait_until(lambda: query('recsys_scorer_latency_seconds_count{transport="http"} >= 20'), 30,
                   "the scorer latency histogram")
        p99 = query('histogram_quantile(0.99, sum by (le) (recsys_scorer_latency_seconds_bucket'
                          '{transport="http"}))')
        assert float(p99[0]["value"][1]) > 0      # a quantile computed from the scraped buckets
        version = wait_until(lambda: query('recsys_policy_version{component="scorer"} == 1'), 30,
                             "the policy version")
        assert version[0]["metric"]["job"] == "scorer"
        # Process metrics come with every role.
        assert query('process_resident_memory_bytes{job="processor"} > 0')
        # The alert rules of deploy/ are loaded and evaluate against these scrapes.
        rules = get_json(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) >= 9
        assert all(r["health"] != "err" for g in rules for r in g["rules"])
    finally:
        prometheus.stop()
        for proc in roles:
            proc.terminate()
        for proc in roles:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
