"""docker-compose.yml validates and wires every role through RECSYS_* settings that exist."""

from __future__ import annotations

import re
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


ROLES = {"processor": "process", "replay": "replay", "learner": "learn", "learner-gpu": "learn", "scorer": "score"}


@needs_compose
def test_every_role_runs_with_a_healthcheck_a_restart_policy_and_its_volumes(rendered):
    services = rendered["services"]
    assert set(ROLES) <= set(services)
    for name, command in ROLES.items():
        service = services[name]
        assert service["command"][0] == command, name
        assert service["restart"] == "unless-stopped", name
        assert "python" in " ".join(service["healthcheck"]["test"]), name
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
    # docker-compose 1.x renders short syntax (source:target:mode); compose v2 renders mappings.
    def mount(v):
        return (v["target"], v["source"]) if isinstance(v, dict) else tuple(reversed(v.split(":")[:2]))
    mounts = {name: dict(mount(v) for v in services[name].get("volumes", [])) for name in ROLES}
    assert mounts["replay"]["/data/replay"] == mounts["learner"]["/data/replay"] == "replay-data"
    assert mounts["learner"]["/data/learner"] == mounts["learner-gpu"]["/data/learner"] == "learner-data"
    assert "/healthz" in " ".join(services["scorer"]["healthcheck"]["test"])


@needs_compose
def test_the_gpu_learner_reserves_a_gpu_and_builds_the_cuda_variant(rendered):
    gpu = rendered["services"]["learner-gpu"]
    assert gpu["profiles"] == ["gpu"], "a GPU learner must not start next to the CPU one by default"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert gpu["image"] != rendered["services"]["learner"]["image"]
    assert gpu["command"][gpu["command"].index("--device") + 1] == "cuda"


def test_the_dockerfile_is_multi_stage_non_root_with_a_torch_variant_argument():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, flags=re.M)
    assert len(stages) >= 2 and "COPY --from=build" in text
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, flags=re.M)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    declared = set(re.findall(r"^ARG (\w+)", text, flags=re.M))
    for service in compose["services"].values():
        assert set(service.get("build", {}).get("args", {})) <= declared
    # Volumes mount where the image created directories owned by the non-root user.
    assert "mkdir -p /data/replay /data/learner && chown -R recsys:recsys /data" in text


def test_prometheus_scrapes_every_role_of_the_compose_file():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    names = {name for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", [])
             for name in sd["names"]}
    assert set(ROLES) <= names <= set(compose["services"])
    ports = {name: sd["port"] for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", [])
             for name in sd["names"]}
    assert ports["scorer"] == 8080 and ports["processor"] == 9100


# -- every service's data on its volume (read from the file itself: no docker-compose needed) ----------
def compose_file() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def mounted(service: dict, path: str) -> str | None:
    """The named volume that holds ``path`` in ``service`` (None: the container's own, lost on recreate)."""
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = (volume.split(":") + [""])[:2]      # source:target[:mode]
        else:
            source, target = volume["source"], volume["target"]
        if not target or not source or source.startswith((".", "/")):
            continue      # a bind mount of the checkout (config), not a data volume
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source
    return None


def data_dirs(name: str, service: dict) -> list[str]:
    """Where ``service`` writes what must survive a recreated container, from its own configuration."""
    env = service.get("environment", {})
    if name == "kafka":
        # The apache/kafka image's default is /tmp/kraft-combined-logs, inside the container.
        logs = env.get("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs")
        return [*logs.split(","), env.get("KAFKA_METADATA_LOG_DIR", logs.split(",")[0])]
    if name == "prometheus":
        flags = [a.split("=", 1)[1] for a in service.get("command", []) if a.startswith("--storage.tsdb.path=")]
        return flags or ["/prometheus"]     # the image's default
    if name == "grafana":
        return [env.get("GF_PATHS_DATA", "/var/lib/grafana")]
    data = env.get("RECSYS_DATA_DIR", "/data")   # deploy/Dockerfile sets /data
    return {"replay": [f"{data}/replay"], "learner": [f"{data}/learner", f"{data}/replay"],
            "learner-gpu": [f"{data}/learner", f"{data}/replay"]}.get(name, [])


def test_every_service_keeps_its_data_on_a_volume():
    services = compose_file()["services"]
    for name in ("kafka", "prometheus", "grafana", "replay", "learner", "learner-gpu"):
        for path in data_dirs(name, services[name]):
            assert mounted(services[name], path), f"{name} writes {path}, which is on no volume: lost on recreate"
    # The learner reads the replay store the replay service writes: the same volume.
    assert mounted(services["learner"], "/data/replay") == mounted(services["replay"], "/data/replay")


def test_kafka_is_kraft_4x_with_a_fixed_cluster_id():
    kafka = compose_file()["services"]["kafka"]
    major = int(kafka["image"].split(":")[1].split(".")[0])
    assert kafka["image"].startswith("apache/kafka:") and major >= 4
    cluster_id = str(kafka["environment"]["CLUSTER_ID"])
    assert re.fullmatch(r"\$\{KAFKA_CLUSTER_ID:-[A-Za-z0-9_-]{22}\}", cluster_id), cluster_id
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka["environment"]
