"""deploy/prometheus: promtool accepts the scrape config and the alert rules, and every rule links the runbook."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (`make test` installs Debian's prometheus package; "
    "elsewhere: apt-get install prometheus, or take promtool from a Prometheus release)",
)
DEPLOY = REPO / "deploy"


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_its_rule_file():
    done = subprocess.run([PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names_in(expressions) -> set[str]:
    """The recsys_* and process_* metric families PromQL expressions read (histogram suffixes removed)."""
    names = set()
    for expr in expressions:
        for name in re.findall(r"\b(?:recsys|process)_[a-z0-9_]+", expr):
            names.add(re.sub(r"_(bucket|count|sum)$", "", name))
    return names


def metric_names_in_rules() -> set[str]:
    return metric_names_in(rule["expr"] for rule in alert_rules())


def test_every_alert_has_a_summary_a_severity_and_a_runbook_section_that_exists():
    runbook = (DEPLOY / "RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, flags=re.M)}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        link = rule["annotations"]["runbook_url"]
        assert link.startswith("deploy/RUNBOOK.md#") and link.split("#", 1)[1] in anchors, (rule["alert"], link)


def test_the_runbook_covers_every_operation_a_team_needs():
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", (DEPLOY / "RUNBOOK.md").read_text(), flags=re.M)}
    for section in ("start", "scale out processors and scorers", "add a gpu learner", "roll back a policy",
                    "replay the dead-letter topic", "rotate the hmac key", "restore from checkpoints", "forgetting"):
        assert section in headings, section
