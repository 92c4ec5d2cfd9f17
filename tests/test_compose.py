"""docker-compose.yml validates and wires every role through RECSYS_* settings that exist."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from stream.config import Settings
from tests.conftest import REPO

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose is not installed (`make test` installs Debian's package; "
    "on other systems: apt-get install docker-compose)",
)


@pytest.fixture(scope="module")
def rendered() -> dict:
    done = subprocess.run([COMPOSE, "config"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@needs_compose
def test_compose_file_validates():
    done = subprocess.run([COMPOSE, "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@needs_compose
def test_core_services_and_kafka_healthcheck(rendered):
    services = rendered["services"]
    assert {"kafka", "prometheus", "grafana", "topics"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "healthcheck" in services["kafka"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


@needs_compose
def test_roles_use_only_known_settings(rendered):
    known = {f"RECSYS_{name.upper()}" for name in Settings.model_fields}
    roles = {n: s for n, s in rendered["services"].items() if s.get("build")}
    assert roles, "no recsys-stream role in the compose file"
    for name, service in roles.items():
        env = service.get("environment", {})
        assert env.get("RECSYS_BOOTSTRAP_SERVERS") == "kafka:9092", name
        unknown = {k for k in env if k.startswith("RECSYS_")} - known
        assert not unknown, f"{name} sets unknown settings {unknown}"
        assert service["build"]["dockerfile"].endswith("deploy/Dockerfile")
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
