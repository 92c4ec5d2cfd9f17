"""Delivery failures are surfaced, never lost in a callback."""

from __future__ import annotations

import json

import pytest

from stream.broker import EmbeddedBroker
from stream.clients import make_admin, make_producer
from stream.config import Settings
from stream.ingest import DeliveryError, EventProducer
from stream.topics import ensure_topics
from tests.events import valid

pytestmark = pytest.mark.integration


def test_flush_raises_when_the_broker_is_gone():
    with EmbeddedBroker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix="gone.", partitions=1)
        ensure_topics(make_admin(settings), settings)
        raw = make_producer(settings, "test", **{"message.timeout.ms": 1500, "log_level": 0})
        producer = EventProducer(settings, component="test", producer=raw)
        assert producer.send_raw("clicks", json.dumps(valid("clicks")).encode()) is None
        producer.flush(10)
        assert producer.delivered == 1
    # The broker is stopped: the next message cannot be acknowledged.
    assert producer.send_raw("clicks", json.dumps(valid("clicks")).encode()) is None
    with pytest.raises(DeliveryError, match="failed|unacknowledged"):
        producer.flush(10)
    assert producer.failures and "clicks" in producer.failures[0]
