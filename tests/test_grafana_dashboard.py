"""deploy/grafana: the dashboard is provisioned from the datasource it names, every query parses
(promtool), and it shows each panel the architecture (docs/ARCHITECTURE.md, "Metrics") names. That every metric it reads is
exported is checked against live scrapes of all roles in tests/e2e/test_closed_loop.py."""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.conftest import REPO
from tests.test_prometheus_config import PROMTOOL, metric_names_in, needs_promtool

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "recsys-stream.json"
#: What Grafana substitutes for its interval variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    out = []
    for expr in exprs:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        out.append(expr)
    return out


def metric_names_in_dashboard() -> set[str]:
    return metric_names_in(dashboard_expressions())


def test_the_dashboard_is_provisioned_against_the_provisioned_datasource():
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasources["datasources"] if d["type"] == "prometheus"}
    board = dashboard()
    used = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
    used |= {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    assert used and used <= uids
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "recsys.yml").read_text())["providers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_of_the_design_is_there():
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for wanted in ("events consumed", "dead letters", "ctr", "reward", "replay size", "learner updates",
                   "learner loss", "policy version per component", "freshness", "scorer latency", "forgetting",
                   "consumer lag"):
        assert wanted in titles, wanted
    names = metric_names_in_dashboard()
    assert {"recsys_scorer_latency_seconds", "recsys_freshness_seconds", "recsys_learner_forgetting_ratio",
            "recsys_policy_version", "recsys_replay_experiences", "recsys_reward_total"} <= names


@needs_promtool
def test_every_dashboard_query_parses(tmp_path):
    # promtool parses each expression of a rule file: one recording rule per query.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_expressions())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules['groups'][0]['rules'])} rules found" in done.stdout
