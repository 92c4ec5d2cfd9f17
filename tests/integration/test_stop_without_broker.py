"""Every long-running role, its broker gone, stops within a bounded time of SIGTERM.

With the broker away, a role's last step (a flush, a synchronous commit, a consumer
leaving its group) can wait on it for a long time or for ever; the role must still end
within ``RECSYS_STOP_GRACE_SECONDS`` of the signal (``stream/ops/lifecycle.py:StopDeadline``),
so a supervisor never has to kill it without a word in the log.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from stream.config import Settings
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.producer import EventProducer
from tests.conftest import cli_command
from tests.events import experience, valid
from tests.waiting import wait_for

GRACE = 5.0
#: What a role may take to exit once its last step is done or its deadline fired: the interpreter's exit.
EXIT_TIME = 2.0
#: How long the test waits beyond the grace before it calls the role stuck.
SLACK = 10.0


def feed(role: str, settings: Settings, scorer_port: int, stop: threading.Event) -> None:
    """What keeps ``role`` busy until ``stop``: its input topic, or scoring requests for the scorer."""
    # It outlives its broker on purpose: quiet (librdkafka would log every reconnection), and its
    # messages expire in a second, so its queue drains and the thread ends soon after the broker.
    producer = EventProducer(settings, component="test", log_level=0, **{"message.timeout.ms": 1000})
    try:
        _feed(role, producer, scorer_port, stop)
    except Exception:   # noqa: BLE001 - the broker went away under it, as the test intends
        pass
    finally:
        producer.release()


def _feed(role: str, producer: EventProducer, scorer_port: int, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        if role == "process":
            now = time.time()
            imp = {**valid("impressions"), "event_id": f"imp-{i}", "request_id": f"r-{i}", "user_id": f"u{i % 50}",
                   "ts": now}
            click = {**valid("clicks"), "event_id": f"clk-{i}", "request_id": f"r-{i}", "user_id": f"u{i % 50}",
                     "ts": now + 0.1}
            producer.send_raw("impressions", json.dumps(imp).encode())
            producer.send_raw("clicks", json.dumps(click).encode())
        elif role == "score":
            request = urllib.request.Request(
                f"http://127.0.0.1:{scorer_port}/score", headers={"Content-Type": "application/json"},
                data=json.dumps({"user_id": f"u{i % 50}", "candidates": ["i1", "i2", "i3", "i4"], "k": 2}).encode())
            try:
                urllib.request.urlopen(request, timeout=5).read()
            except OSError:
                pass   # not listening yet
        else:
            producer.send("experiences", experience(i))
        if i % 20 == 0:
            producer.flush(2)
            time.sleep(0.01)


def role_lines(log) -> str:
    """The role's own log lines, without librdkafka's (``%3|...|FAIL|``: one per reconnection attempt, and
    with the broker gone they fill any tail a failure could show)."""
    return "\n".join(line for line in log.read_text().splitlines() if not line.startswith("%"))[-3000:]


@pytest.mark.parametrize("args", [
    ["process"],
    ["process", "--engine", "faust"],
    ["replay"],
    ["learn", "--threads", "1"],
    ["score"],
], ids=["process", "process-faust", "replay", "learn", "score"])
def test_a_role_whose_broker_is_gone_stops_within_its_grace(args, settings, cli_env, tmp_path):
    log = tmp_path / f"{args[0]}.log"
    scorer_port = free_port()
    if args[0] == "score":
        args = [*args, "--port", str(scorer_port)]
    stop_feeding = threading.Event()
    with EmbeddedBroker() as broker:
        ours = settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        env = {**cli_env, "RECSYS_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
               "RECSYS_STOP_GRACE_SECONDS": str(GRACE), "RECSYS_METRICS_PORT": str(free_port())}
        proc = subprocess.Popen(cli_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        feeder = threading.Thread(target=feed, args=(args[0], ours, scorer_port, stop_feeding), daemon=True)
        try:
            wait_for(lambda: ": running" in log.read_text() or proc.poll() is not None, 120,
                     f"{' '.join(args)} to start", logs=[log])
            assert proc.poll() is None, role_lines(log)
            feeder.start()
            time.sleep(4.0)   # at work: partitions assigned, input flowing, offsets and output in flight
        except BaseException:
            proc.kill()
            raise
    # The broker is stopped now (the context manager waited for it), with traffic still flowing.
    stop_feeding.set()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(GRACE + SLACK)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"{' '.join(args)} still running {GRACE + SLACK:g}s after SIGTERM without its broker\n"
                    + role_lines(log))
    took = time.monotonic() - started
    feeder.join(15)
    text = log.read_text()
    assert "received signal 15" in text or args[1:2] == ["--engine"], role_lines(log)
    # Either it finished its last step within the grace, or the deadline ended it at the grace and said why.
    if code == 0:
        assert took < GRACE + EXIT_TIME, f"exited 0 after {took:.1f}s: the {GRACE:g}s deadline never fired"
    else:
        assert code == 3 and "exiting with status 3" in text, (code, role_lines(log))
        assert took >= GRACE, f"the deadline fired after {took:.1f}s, before the {GRACE:g}s grace"
