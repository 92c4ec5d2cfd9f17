"""Topic creation over the wire: all topics, idempotent, compaction read back from the broker."""

from __future__ import annotations

import json
import subprocess

from stream.kafka.clients import make_admin
from stream.kafka.topics import (
    LOGICAL_TOPICS,
    describe_topics,
    ensure_topics,
    topic_name,
)
from tests.conftest import cli_command


def test_ensure_topics_creates_everything_once(settings):
    admin = make_admin(settings)
    first = ensure_topics(admin, settings)
    assert set(first) == {topic_name(settings, t) for t in LOGICAL_TOPICS}
    assert set(first.values()) == {"created"}
    second = ensure_topics(admin, settings)
    assert set(second.values()) == {"exists"}


def test_compaction_and_partitions_as_the_broker_reports_them(settings, topics):
    infos = {i.name: i for i in describe_topics(make_admin(settings), settings)}
    assert infos[topic_name(settings, "policies")].cleanup_policy == "compact"
    assert infos[topic_name(settings, "items")].cleanup_policy == "compact"
    assert infos[topic_name(settings, "clicks")].cleanup_policy == "delete"
    assert infos[topic_name(settings, "clicks")].partitions == settings.partitions
    assert infos[topic_name(settings, "policies")].partitions == 1
    assert infos[topic_name(settings, "score-requests")].partitions == settings.partitions


def test_scoring_topics_take_their_own_partition_count(settings):
    scoring = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}sp.", "scoring_partitions": 6})
    admin = make_admin(scoring)
    ensure_topics(admin, scoring)
    infos = {i.name: i.partitions for i in describe_topics(admin, scoring)}
    assert infos[topic_name(scoring, "score-requests")] == infos[topic_name(scoring, "score-responses")] == 6
    assert infos[topic_name(scoring, "impressions")] == settings.partitions


def test_topics_cli_create_then_list(cli_env, settings):
    created = subprocess.run(cli_command("topics", "create", "--json"), env=cli_env,
                             capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    assert set(json.loads(created.stdout).values()) == {"created"}
    listed = subprocess.run(cli_command("topics", "list", "--json"), env=cli_env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    out = json.loads(listed.stdout)
    assert out["missing"] == []
    policies = next(t for t in out["topics"] if t["name"] == topic_name(settings, "policies"))
    assert policies["cleanup_policy"] == "compact"
