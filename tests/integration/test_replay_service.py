"""The replay service over the wire: every experience stored exactly once, across a kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess

import msgspec

from stream import schemas
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from stream.replay.service import default_store_path
from stream.replay.store import count_stored
from tests.conftest import cli_command
from tests.events import experience
from tests.waiting import wait_for, wait_until_consumed


def start(cli_env):
    return subprocess.Popen(cli_command("replay", "--metrics-port", "0"), env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_stream_then_restart_stores_every_experience_once(settings, topics, cli_env):
    total = 20_000
    producer = EventProducer(settings, component="test")
    for i in range(total // 2):
        producer.send("experiences", experience(i))
    # Re-emitted experiences (as a restarted processor would send) and garbage must not count.
    for i in range(100):
        producer.send("experiences", experience(i))
    assert producer.send_raw("experiences", b'{"event_id": "broken"') == "malformed_json"
    producer._produce(topic_name(settings, "experiences"), b"u", b"not json")   # bypasses validation
    # A context wider than the policy's (RECSYS_USER_FEATURES, 16): dead-lettered, never cut to fit.
    wide = msgspec.structs.replace(experience(0), event_id="wide:item-1:click",
                                   context=schemas.Context(features=[0.5] * 20))
    producer.send("experiences", wide)
    producer.flush()

    path = default_store_path(settings)
    service = start(cli_env)
    try:
        wait_for(lambda: count_stored(path) >= 2000, 60, "the first experiences to be stored")
        os.kill(service.pid, signal.SIGKILL)
        service.wait(10)
        for i in range(total // 2, total):
            producer.send("experiences", experience(i))
        producer.flush()
        service = start(cli_env)
        wait_for(lambda: count_stored(path) >= total, 120, "all experiences to be stored")
        # Past the group's commit everything read is stored: a duplicate would be in the store by now.
        wait_until_consumed(settings, f"{settings.topic_prefix}replay", topic_name(settings, "experiences"), 60,
                            "the replay service to commit past every experience")
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0, service.stderr.read()
    finally:
        if service.poll() is None:
            service.kill()
    with sqlite3.connect(path) as db:
        ids = [r[0] for r in db.execute("SELECT event_id FROM experiences")]
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == {experience(i).event_id for i in range(total)}
    letters = [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]
    consumer_side = [d for d in letters if d.component == "replay"]
    # A kill -9 between the broker's acknowledgement and the outbox delete sends a letter again
    # (the service's docstring): at least once, each copy naming the same origin and reason.
    origin = lambda d: (d.source_topic, d.partition, d.offset)     # noqa: E731
    first: dict = {}
    for d in consumer_side:
        first.setdefault(origin(d), d)
    assert all(d.reason == first[origin(d)].reason and d.original == first[origin(d)].original for d in consumer_side)
    consumer_side = list(first.values())
    assert [d.reason for d in consumer_side] == ["malformed_json", "width"]
    assert consumer_side[0].original == b"not json" and consumer_side[0].offset is not None
    assert "20 values; the policy takes 16" in consumer_side[1].error
