"""`recsys-stream dlq show|replay` over the wire: valid originals go back to their topic unchanged;
invalid, truncated and derived ones stay put and are counted."""

from __future__ import annotations

import json
import subprocess

import pytest

from stream.kafka.clients import make_producer
from stream.kafka.dead_letters import DeadLetters, envelope
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from tests.conftest import cli_command
from tests.events import valid


@pytest.fixture
def letters(settings, topics):
    """Five dead letters as the roles would write them."""
    fixed_click = json.dumps(valid("clicks") | {"event_id": "c-fixed"}).encode()
    orphan_click = json.dumps(valid("clicks") | {"event_id": "c-orphan"}).encode()
    producer = make_producer(settings, "test")
    dlq = DeadLetters(settings, "process", producer)
    clicks = topic_name(settings, "clicks")
    dlq.send(clicks, orphan_click, "orphan", "no impression for request r1", partition=0, offset=3)
    dlq.send(clicks, b'{"event_id": "c2", "user_id": ', "malformed_json", "truncated JSON", partition=0, offset=4)
    # Refused by an older, stricter contract; valid under today's.
    dlq.send(clicks, fixed_click, "schema", "ts: expected a number", partition=1, offset=9)
    big = envelope(clicks, b"x" * 300_000, "oversized", "too big", "ingest")
    assert big.original_truncated
    dlq.publish(big)
    dlq.send(topic_name(settings, "experiences"), json.dumps({"x": 1}).encode(), "schema", "bad", partition=0,
             offset=1)
    assert producer.flush(30) == 0
    return {"orphan": orphan_click, "fixed": fixed_click}


def run_cli(cli_env, *args: str) -> dict:
    done = subprocess.run(cli_command("dlq", *args, "--json"), env=cli_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_show_counts_by_topic_and_reason(cli_env, letters):
    shown = run_cli(cli_env, "show", "--limit", "2")
    assert shown["letters"] == 5
    assert shown["by_topic_and_reason"] == {"clicks/orphan": 1, "clicks/malformed_json": 1, "clicks/schema": 1,
                                            "clicks/oversized": 1, "experiences/schema": 1}
    assert len(shown["newest"]) == 2
    assert run_cli(cli_env, "show", "--reason", "orphan")["letters"] == 1


def test_replay_sends_only_what_now_passes_the_contract(settings, cli_env, letters):
    dry = run_cli(cli_env, "replay", "--dry-run")
    assert dry["replayed"] == 2 and dry["dry_run"] is True
    assert read_topic(settings, topic_name(settings, "clicks")) == []          # a dry run sends nothing

    report = run_cli(cli_env, "replay")
    assert report["selected"] == 5
    assert report["replayed_by_topic_and_reason"] == {"clicks/orphan": 1, "clicks/schema": 1}
    assert report["still_invalid"] == {"malformed_json": 1}
    assert report["skipped"] == {"truncated": 1, "not_replayable": 1}
    replayed = read_topic(settings, topic_name(settings, "clicks"))
    assert sorted(m.value() for m in replayed) == sorted(letters.values())     # bytes unchanged
    assert {m.key() for m in replayed} == {b"u1"}                                # keyed by user_id

    only_orphans = run_cli(cli_env, "replay", "--reason", "orphan", "--topic", "clicks")
    assert only_orphans["replayed_by_topic_and_reason"] == {"clicks/orphan": 1}
    assert run_cli(cli_env, "replay", "--since", "2100-01-01T00:00:00")["selected"] == 0
