"""The standing poison-pill suite: hostile and careless input against every role over the wire.

Every role runs as its own process (reward join, replay buffer, learner, scorer with its
Kafka transport). Into their inputs go, mixed with a scripted stream of good events: deep
nesting, numbers past their bounds, a click dated a day ahead, oversized and truncated
JSON, a forged policy header at a huge number and a nested record on the compacted
policies topic. Midway the reward join is SIGKILLed and restarted. At the end: no role
exited, the good events' rewards are in the replay store exactly once, every poison pill
is dead-lettered (or refused and counted) with its reason, the scorer still serves, and the
inspection commands still work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter

import pytest
from confluent_kafka import Producer

from stream import schemas
from stream.kafka.broker import free_port
from stream.kafka.clients import base_config
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from stream.policy.bus import HEADER_PART, record_key
from stream.replay.service import default_store_path
from stream.replay.store import count_stored
from tests.conftest import cli_command, scraped, stop_processes
from tests.integration.test_join_recovery import WINDOWS, Pacer, assert_exact, script, stored
from tests.waiting import wait_for

NESTED = b'{"event_id": "n", "user_id": "u", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}"


def poison(ts: float) -> list[tuple[str, bytes, str]]:
    """(topic, raw bytes, the dead-letter reason it must get); ``ts`` is the wall clock now."""
    big = {"event_id": "imp-big", "request_id": "req-big", "user_id": "user-1", "ts": ts, "policy_version": 2**64,
           "shown": [{"item_id": "item-1", "position": 0, "propensity": 0.5}]}
    future = {"event_id": "clk-future", "user_id": "user-2", "item_id": "item-1", "ts": ts + 86_400,
              "request_id": "req-0"}
    return [
        ("impressions", NESTED, "malformed_json"),
        ("impressions", json.dumps(big).encode(), "schema"),
        ("clicks", NESTED, "malformed_json"),
        ("clicks", json.dumps(future).encode(), "future"),
        ("clicks", b'{"event_id": "cut", "user_id": ', "malformed_json"),
        ("purchases", b"x" * (schemas.MAX_EVENT_BYTES + 1), "oversized"),
        ("experiences", NESTED, "malformed_json"),
    ]


def start(cli_env, role: str, log, *extra: str, engine: str = "batch") -> subprocess.Popen:
    args = (role, *WINDOWS, "--engine", engine, *extra) if role == "process" else (role, *extra)
    if role != "score":
        args = (*args, "--metrics-port", "0")
    return subprocess.Popen(cli_command(*args), env=dict(cli_env, RECSYS_LOG_LEVEL="INFO"),
                            stdout=subprocess.DEVNULL, stderr=log.open("a"))


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


# The faust engine keeps its join state in memory, so a SIGKILL loses the open windows of its
# partitions (README, `process --help`): it faces the poison without the kill.
@pytest.mark.parametrize(("engine", "kill"), [("batch", True), ("faust", False)])
def test_poison_pills_and_a_kill_leave_every_role_running_and_every_reward_exact(settings, topics, cli_env, tmp_path,
                                                                                  engine, kill):
    events, expected = script(impressions=1200, seed=23)
    now = time.time()
    raw_producer = Producer(base_config(settings, "poison"))
    # The compacted policies topic: a nested header and a forged one at a huge number, before any role reads it.
    policies = topic_name(settings, "policies")
    raw_producer.produce(policies, key=record_key(settings.policy_name, 7, HEADER_PART), value=NESTED, partition=0)
    # A header that parses, with a chunk, at the largest number: complete on the topic, but it never verifies.
    forged = {"name": settings.policy_name, "version": schemas.MAX_VERSION, "created_at": now, "checksum": "0" * 64,
              "total_bytes": 5, "n_chunks": 1}
    raw_producer.produce(policies, key=record_key(settings.policy_name, schemas.MAX_VERSION, "c00000"), value=b"weigh",
                         partition=0)
    raw_producer.produce(policies, key=record_key(settings.policy_name, schemas.MAX_VERSION, HEADER_PART),
                         value=json.dumps(forged).encode(), partition=0)
    assert raw_producer.flush(10) == 0

    logs = {role: tmp_path / f"{role}.log" for role in ("process", "replay", "learn", "score")}
    port = free_port()
    procs = {"process": start(cli_env, "process", logs["process"], engine=engine), "replay": start(cli_env, "replay", logs["replay"]),
             "learn": start(cli_env, "learn", logs["learn"], "--publish-seconds", "2", "--threads", "1"),
             "score": start(cli_env, "score", logs["score"], "--port", str(port))}
    path = default_store_path(settings)
    pacer = Pacer(settings, events, seconds=8.0)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")["status"] == "ok", 180, "the scorer to serve",
                 logs=logs.values(), ignore=(OSError,))
        pacer.start()
        pills = poison(now)
        for logical, raw, _reason in pills:
            raw_producer.produce(topic_name(settings, logical), key=b"user-1", value=raw)
        raw_producer.produce(topic_name(settings, "items"), key=b"item-x", value=NESTED)   # no role dead-letters items
        assert raw_producer.flush(10) == 0
        wait_for(lambda: count_stored(path) >= 1000, 120, "the first experiences to be stored", logs=logs.values())
        if kill:
            os.kill(procs["process"].pid, signal.SIGKILL)
            procs["process"].wait(10)
            procs["process"] = start(cli_env, "process", logs["process"], engine=engine)
        pacer.join(60)
        assert pacer.error is None and pacer.sent == len(events)
        wait_for(lambda: count_stored(path) >= len(expected), 180, "every expected experience to be stored",
                 logs=logs.values())
        # The scorer still answers, over HTTP, with a policy it verified (the learner's, or none yet).
        request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=json.dumps(
            {"user_id": "user-1", "candidates": ["item-1", "item-2"]}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["policy_version"] < 2**53 - 1
        wait_for(lambda: scraped(port, "recsys_events_consumed_total", 'topic="items"', 'status="invalid"') >= 1, 30,
                 "the scorer to count the nested item as invalid", logs=logs.values())
        alive = {role: proc.poll() for role, proc in procs.items()}
        assert all(code is None for code in alive.values()), alive
    finally:
        stop_processes(*procs.values())
    assert all(proc.returncode == 0 for proc in procs.values()), {r: p.returncode for r, p in procs.items()}

    assert_exact(stored(path), expected)
    letters = [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]
    by_source = Counter((d.source_topic.removeprefix(settings.topic_prefix), d.reason) for d in letters)
    for logical, _raw, reason in pills:
        assert by_source[(logical, reason)] >= 1, (logical, reason, by_source)
    assert not any(d.reason == "orphan" for d in letters), "a good event was lost to the poison or the kill"
    # The forged and the nested policy records were refused, never adopted, never numbered on from.
    versions = subprocess.run(cli_command("policy", "list", "--json"), env=cli_env, capture_output=True, text=True,
                              timeout=120)
    assert versions.returncode == 0, versions.stderr
    numbers = [v["version"] for v in json.loads(versions.stdout)["versions"]]
    assert schemas.MAX_VERSION in numbers                            # listed (the list does not verify) ...
    learned = sorted(n for n in numbers if n != schemas.MAX_VERSION)
    assert learned and learned == list(range(learned[0], learned[-1] + 1)), numbers
    assert learned[-1] < 1000, numbers                               # ... but nobody numbered on from it
    shown = subprocess.run(cli_command("dlq", "show", "--json"), env=cli_env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and json.loads(shown.stdout)["letters"] == len(letters)
