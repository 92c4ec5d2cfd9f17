"""Delivery failures are surfaced, never lost in a callback."""

from __future__ import annotations

import json

import pytest

from stream.config import Settings
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.clients import make_admin, make_producer
from stream.kafka.producer import DeliveryError, EventProducer
from stream.kafka.topics import ensure_topics
from tests.events import valid


def test_flush_raises_when_the_broker_is_gone():
    with EmbeddedBroker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix="gone.", partitions=1)
        ensure_topics(make_admin(settings), settings)
        raw = make_producer(settings, "test", **{"message.timeout.ms": 1500, "log_level": 0})
        producer = EventProducer.sharing(settings, "test", raw)
        assert producer.send_raw("clicks", json.dumps(valid("clicks")).encode()) is None
        producer.flush(10)
        assert producer.delivered == 1
    # The broker is stopped: the next message cannot be acknowledged.
    assert producer.send_raw("clicks", json.dumps(valid("clicks")).encode()) is None
    with pytest.raises(DeliveryError, match="failed|unacknowledged") as raised:
        producer.flush(10)
    assert raised.value.failures and "clicks" in raised.value.failures[0]
    assert producer.failures == []     # reported once: the next flush starts clean
