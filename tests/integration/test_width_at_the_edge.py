"""A context of the wrong width is refused where events enter (ingest, the join's input), with a dead
letter that `dlq replay` resends once RECSYS_USER_FEATURES is fixed, and the resent impressions join."""

from __future__ import annotations

import json
import subprocess

from confluent_kafka import Producer

from stream import schemas
from stream.join.reward_join import JoinConfig
from stream.join.worker import JoinWorker
from stream.kafka.clients import base_config
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from tests.conftest import cli_command
from tests.events import valid

JOIN = JoinConfig(click_window=5, purchase_window=10, grace=1)
NARROW = [0.1, 0.2, 0.3, 0.4]       # a shop whose policy takes 4 user features, run with the default 16


def narrow_requests(prefix: str, n: int) -> tuple[list[bytes], list[bytes]]:
    impressions, clicks = [], []
    for i in range(n):
        request = f"{prefix}-{i}"
        impressions.append(json.dumps(valid("impressions") | {
            "event_id": f"imp-{request}", "request_id": request, "user_id": f"u{i}", "ts": 1_763_900_000.0 + i,
            "context": {"features": NARROW}}).encode())
        clicks.append(json.dumps(valid("clicks") | {
            "event_id": f"clk-{request}", "request_id": request, "user_id": f"u{i}", "ts": 1_763_900_001.0 + i}).encode())
    return impressions, clicks


def dead_letters(settings) -> list[schemas.DeadLetter]:
    return [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]


def experiences(settings) -> list[schemas.Experience]:
    return [schemas.decode("experiences", m.value()) for m in read_topic(settings, topic_name(settings, "experiences"))]


def cli(env: dict, *args: str) -> dict:
    done = subprocess.run(cli_command(*args, "--json"), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_ingest_refuses_the_wrong_width_and_the_replayed_impressions_join(settings, topics, cli_env, tmp_path):
    impressions, clicks = narrow_requests("ing", 6)
    (tmp_path / "impressions.jsonl").write_bytes(b"\n".join(impressions) + b"\n")
    (tmp_path / "clicks.jsonl").write_bytes(b"\n".join(clicks) + b"\n")
    refused = cli(cli_env, "ingest", str(tmp_path / "impressions.jsonl"), "--topic", "impressions")
    assert refused["produced"] == 0 and refused["reasons"] == {"width": 6}
    assert cli(cli_env, "ingest", str(tmp_path / "clicks.jsonl"), "--topic", "clicks")["produced"] == 6
    letters = dead_letters(settings)
    assert [d.reason for d in letters] == ["width"] * 6
    assert "RECSYS_USER_FEATURES" in letters[0].error and "4 values" in letters[0].error

    # Replayed under the same setting, they are still refused (and not sent).
    assert cli(cli_env, "dlq", "replay", "--reason", "width")["still_invalid"] == {"width": 6}
    fixed_env = {**cli_env, "RECSYS_USER_FEATURES": "4"}
    assert cli(fixed_env, "dlq", "replay", "--reason", "width")["replayed"] == 6

    fixed = settings.model_copy(update={"user_features": 4})
    JoinWorker(fixed, JOIN, until_caught_up=True).run()
    joined = experiences(fixed)
    assert sorted(e.request_id for e in joined if e.kind == "click") == sorted(f"ing-{i}" for i in range(6))
    assert all(e.context.features == NARROW for e in joined)
    assert [d.reason for d in dead_letters(settings)] == ["width"] * 6      # nothing more refused


def test_the_join_refuses_the_wrong_width_at_its_input_where_a_replay_can_resend_it(settings, topics, cli_env):
    impressions, _clicks = narrow_requests("join", 5)
    foreign = Producer({**base_config(settings, "foreign"), "partitioner": "murmur2_random"})
    for i, raw in enumerate(impressions):     # a producer that validates nothing of ours
        foreign.produce(topic_name(settings, "impressions"), key=f"u{i}".encode(), value=raw)
    assert foreign.flush(10) == 0

    JoinWorker(settings, JOIN, until_caught_up=True).run()
    assert experiences(settings) == []        # nothing derived from them, so nothing is lost downstream
    letters = dead_letters(settings)
    assert {(d.reason, d.component) for d in letters} == {("width", "process")} and len(letters) == 5
    assert {d.source_topic for d in letters} == {topic_name(settings, "impressions")}
    fixed_env = {**cli_env, "RECSYS_USER_FEATURES": "4"}
    assert cli(fixed_env, "dlq", "replay", "--reason", "width", "--dry-run")["replayed"] == 5
