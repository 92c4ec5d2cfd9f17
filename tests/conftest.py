"""Shared fixtures: one broker per test session, a fresh topic namespace per test.

Without RECSYS_BOOTSTRAP_SERVERS the embedded broker (Tansu) is started once for the
whole session; with it, the same tests run against that Kafka cluster instead. Each
test gets its own topic prefix, so tests never see each other's messages.
"""

from __future__ import annotations

import gc
import os
import sys
import uuid
from pathlib import Path

import pytest

from stream.config import Settings

REPO = Path(__file__).resolve().parent.parent

#: Each test folder is a lane; a test's lane marker comes from where it lives.
LANES = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(config, items):
    """Mark every test with its lane (tests/unit, tests/integration, tests/e2e; top-level checks are unit)."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        lane = LANES.get(parts[0], "unit") if len(parts) > 1 else "unit"
        item.add_marker(getattr(pytest.mark, lane))


@pytest.fixture(scope="session")
def bootstrap_servers():
    external = os.environ.get("RECSYS_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    from stream.kafka.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
        # Clients a test left unreferenced are destroyed while the broker still answers: once it is
        # gone their threads would print "Connection refused" after the run's summary.
        gc.collect()


#: Policy versions are signed by default (stream/policy/trust.py): every test process shares this key.
TEST_KEY = uuid.uuid4().hex


@pytest.fixture()
def settings(bootstrap_servers, tmp_path) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=2,
        data_dir=tmp_path / "data",
        hmac_key=TEST_KEY,
    )


@pytest.fixture()
def topics(settings):
    from stream.kafka.clients import make_admin
    from stream.kafka.topics import ensure_topics

    return ensure_topics(make_admin(settings), settings)


@pytest.fixture()
def cli_env(settings) -> dict[str, str]:
    """Environment for running `recsys-stream` as a subprocess against the test's namespace."""
    from stream.config import child_environment

    return child_environment(settings)


def stop_processes(*procs, timeout: float = 30.0) -> None:
    """SIGTERM every role still running, then wait; one that does not stop in time is killed."""
    import signal
    import subprocess

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def scraped(port: int, name: str, *labels: str) -> float:
    """Sum of a metric's samples on a role's ``/metrics`` whose labels include every ``labels`` entry
    (``'transport="kafka"'``); 0 when the metric is absent or the role does not answer (yet)."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(float(value) for found, value in re.findall(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, flags=re.M)
               if all(label in (found or "") for label in labels))


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream", *args]
