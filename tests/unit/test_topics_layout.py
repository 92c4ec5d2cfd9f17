"""Topic names and configs derived from settings (no broker)."""

from __future__ import annotations

import pytest

from stream.config import Settings
from stream.kafka.topics import LOGICAL_TOPICS, topic_name, topic_specs


def test_prefix_applies_to_every_topic():
    s = Settings(topic_prefix="shop1.", partitions=6)
    specs = topic_specs(s)
    assert [spec.logical for spec in specs] == list(LOGICAL_TOPICS)
    assert all(spec.name == f"shop1.{spec.logical}" for spec in specs)


def test_policies_and_items_are_compacted_and_events_expire():
    specs = {spec.logical: spec for spec in topic_specs(Settings(event_retention_ms=3_600_000))}
    assert specs["policies"].config["cleanup.policy"] == "compact"
    assert specs["items"].config["cleanup.policy"] == "compact"
    assert specs["policies"].partitions == 1
    for logical in ("impressions", "clicks", "purchases"):
        assert specs[logical].config["cleanup.policy"] == "delete"
        assert specs[logical].config["retention.ms"] == "3600000"


def test_unknown_topic_name_is_an_error():
    with pytest.raises(ValueError, match="unknown topic"):
        topic_name(Settings(), "views")
