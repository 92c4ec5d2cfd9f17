"""The learner and the scorer, run as their commands, give freed heap back on the schedule they were given
and say so on /metrics (the soak's memory levels depend on it: BENCHMARKS.md, "Soak")."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from stream.kafka.broker import free_port
from tests.conftest import cli_command
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")


def trims(port: int, component: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(rf'^recsys_malloc_trim_seconds_count{{component="{component}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(("role", "component", "args"), [
    ("learn", "learner", ["--threads", "1", "--metrics-port"]),
    ("score", "scorer", ["--no-kafka-requests", "--port"]),
])
def test_a_role_trims_on_its_schedule(role, component, args, cli_env, topics, tmp_path):
    port = free_port()
    log = tmp_path / f"{role}.log"
    proc = subprocess.Popen(cli_command(role, "--trim-seconds", "0.5", *args, str(port)), env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        wait_for(lambda: trims(port, component) >= 3, 120, f"three trims on the {role} role's /metrics",
                 interval=0.5, logs=[log], ignore=(OSError,))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
