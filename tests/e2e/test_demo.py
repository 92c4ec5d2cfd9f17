"""The README's demo command runs end to end and stops everything it started."""

from __future__ import annotations

import json
import os
import subprocess

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
    import socket

    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0, "demo left its broker running"
