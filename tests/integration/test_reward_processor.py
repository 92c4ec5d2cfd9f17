"""The reward-join processor over the wire: a scripted sequence gives exactly these experiences and dead letters."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from stream import schemas
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from tests.conftest import cli_command
from tests.waiting import wait_for, wait_until_consumed

T0 = 1_763_900_000.0


def scripted() -> list[tuple[str, bytes]]:
    def dump(payload: dict) -> bytes:
        return json.dumps(payload).encode()

    impression = {"event_id": "imp-1", "request_id": "req-1", "user_id": "u1", "ts": T0, "policy_version": 7,
                  "shown": [{"item_id": i, "position": p, "propensity": 1 / (3 - p)} for p, i in enumerate("abc")]}
    return [
        ("impressions", dump(impression)),
        ("clicks", dump({"event_id": "clk-1", "request_id": "req-1", "user_id": "u1", "item_id": "a", "ts": T0 + 2})),
        ("clicks", dump({"event_id": "clk-1", "request_id": "req-1", "user_id": "u1", "item_id": "a", "ts": T0 + 2})),
        # out of order: earlier than the click above, and without request_id
        ("clicks", dump({"event_id": "clk-2", "user_id": "u1", "item_id": "b", "ts": T0 + 1})),
        ("clicks", dump({"event_id": "clk-9", "request_id": "req-404", "user_id": "u1", "item_id": "z", "ts": T0 + 3})),
        ("clicks", b'{"event_id": "clk-bad", "user_id": '),
        ("purchases", dump({"event_id": "pur-1", "request_id": "req-1", "user_id": "u1", "item_id": "a",
                            "value": 30.0, "ts": T0 + 100})),
    ]


@pytest.mark.parametrize("engine", ["batch", "faust"])
def test_scripted_sequence_over_the_wire(settings, topics, cli_env, engine):
    producer = EventProducer(settings, component="test")
    for logical, raw in scripted():
        producer._produce(topic_name(settings, logical), b"u1", raw)   # as sent, invalid ones included
    producer.close()
    proc = subprocess.Popen(cli_command("process", "--engine", engine, "--metrics-port", "0"), env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def read(logical: str, expected: int):
            got = [schemas.decode(logical, m.value()) for m in read_topic(settings, topic_name(settings, logical))]
            return got if len(got) >= expected else None

        wait_for(lambda: read("experiences", 4), 90, "the four experiences")
        letters = wait_for(lambda: read("dlq", 2), 30, "the two dead letters")
        # Nothing more can come from these inputs once the group has committed past all of them.
        for logical in ("impressions", "clicks", "purchases"):
            wait_until_consumed(settings, f"{settings.topic_prefix}rewards", topic_name(settings, logical), 60,
                                f"the join to commit past every {logical} record")
        experiences = [schemas.decode("experiences", m.value())
                       for m in read_topic(settings, topic_name(settings, "experiences"))]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    summary = sorted((e.event_id, e.reward, e.position, e.policy_version) for e in experiences)
    assert summary == [
        ("req-1:a:click", 1.0, 0, 7),
        ("req-1:a:purchase", 2.0, 0, 7),
        ("req-1:b:click", 1.0, 1, 7),
        ("req-1:c:no_click", 0.0, 2, 7),
    ], proc.stderr.read() if proc.poll() is not None else ""
    assert sorted((d.reason, d.component) for d in letters) == [("malformed_json", "process"), ("orphan", "process")]
    orphan = next(d for d in letters if d.reason == "orphan")
    assert json.loads(orphan.original)["event_id"] == "clk-9" and orphan.offset is not None


def test_backfill_until_caught_up_closes_every_window_and_exits(settings, topics, cli_env):
    """``process --until-caught-up``: no idle timer to guess; the last windows close by event time."""
    producer = EventProducer(settings, component="test")
    for logical, raw in scripted():
        producer._produce(topic_name(settings, logical), b"u1", raw)
    # Other users land on other partitions; their last requests' windows are still open at the end.
    for n in range(8):
        producer.send("impressions", schemas.Impression(
            event_id=f"imp-late-{n}", request_id=f"late-{n}", user_id=f"user-{n}", ts=T0 + 50 + n, policy_version=7,
            shown=[schemas.ShownItem(item_id="x", position=0, propensity=0.5)]))
    producer.close()
    done = subprocess.run(cli_command("process", "--until-caught-up", "--metrics-port", "0"), env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished the backfill" in done.stderr
    experiences = sorted((e.event_id, e.reward) for e in (
        schemas.decode("experiences", m.value()) for m in read_topic(settings, topic_name(settings, "experiences"))))
    assert experiences == sorted([
        ("req-1:a:click", 1.0), ("req-1:a:purchase", 2.0), ("req-1:b:click", 1.0), ("req-1:c:no_click", 0.0),
        *((f"late-{n}:x:no_click", 0.0) for n in range(8))])
    for logical in ("impressions", "clicks", "purchases"):   # committed to the end: a rerun reads nothing new
        wait_until_consumed(settings, f"{settings.topic_prefix}rewards", topic_name(settings, logical), 10,
                            f"the backfill's commit past every {logical} record")
