"""The embedded broker's start, stop and failure messages, and roles without a broker."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from stream.kafka.broker import BrokerError, EmbeddedBroker, free_port
from tests.conftest import REPO, cli_command


def metrics_url(proc: subprocess.Popen) -> str:
    """The /metrics address `recsys-stream broker` prints on stderr once it serves it."""
    lines = []
    while not any("/metrics" in line for line in lines):
        line = proc.stderr.readline()
        assert line, f"no metrics address before exit: {lines}"
        lines.append(line)
    return re.search(r"http://\S+/metrics", "".join(lines)).group(0)


def _env_without_broker() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}


def test_port_already_taken_is_a_clear_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            EmbeddedBroker(port=port).start()


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(BrokerError, match="does not exist or is not executable"):
        EmbeddedBroker(binary=tmp_path / "tansu").start()


def test_context_manager_stops_the_broker():
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert broker.running()
        with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
            pass
    assert not broker.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_broker_command_runs_in_foreground_and_stops_on_ctrl_c():
    port = free_port()
    proc = subprocess.Popen(cli_command("broker", "--port", str(port)), env=_env_without_broker(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in first, proc.stderr.read() if proc.poll() is not None else first
        assert f"RECSYS_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in proc.stdout.readline()
        assert "export RECSYS_PARTITIONS=1 " in proc.stdout.readline()    # none in the environment
        key = proc.stdout.readline()       # no key in the environment: one is made for this broker's roles
        assert re.search(r"export RECSYS_HMAC_KEY=[0-9a-f]{64}\b", key), key
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(0.1)
        except OSError:
            break
    else:
        pytest.fail("broker still listening after Ctrl-C")


def test_broker_command_refuses_a_taken_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(cli_command("broker", "--port", str(port)), env=_env_without_broker(),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "already in use" in done.stderr


@pytest.mark.parametrize("args", [("topics", "list"), ("topics", "create"), ("ingest", str(REPO / "pyproject.toml"), "--topic", "clicks")])
def test_roles_without_a_broker_point_at_recsys_stream_broker(args):
    done = subprocess.run(cli_command(*args), env=_env_without_broker(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "recsys-stream broker" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_broker_is_a_clear_error():
    env = _env_without_broker() | {"RECSYS_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    done = subprocess.run(cli_command("topics", "list"), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot reach Kafka" in done.stderr and "Traceback" not in done.stderr


def test_broker_command_exports_its_memory_and_cpu_and_warns_past_a_level():
    """A 1 MB memory level is passed at once: the warning names the figure; /metrics has the broker's own."""
    port = free_port()
    proc = subprocess.Popen(cli_command("broker", "--port", str(port), "--metrics-port", "0", "--warn-mb", "1"),
                            env=_env_without_broker(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = metrics_url(proc)
        warning = ""
        while "embedded broker holds" not in warning:
            warning = proc.stderr.readline()
            assert warning, "no memory warning before exit"
        assert re.search(r"holds [\d,]+ MB after \d+ min .*level 1 MB", warning), warning
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        resident = float(re.search(r"^recsys_broker_resident_bytes (\S+)$", text, re.M).group(1))
        assert resident > 1 * 2**20
        assert 'recsys_broker_warnings_total{reason="memory"} 1.0' in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
