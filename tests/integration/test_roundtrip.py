"""One valid message of every contract goes through the broker and comes back equal."""

from __future__ import annotations

import json

import pytest

from stream import schemas
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from tests.events import VALID, valid


def test_every_schema_round_trips_over_the_wire(settings, topics):
    producer = EventProducer(settings, component="test")
    sent = {}
    for logical in VALID:
        event = schemas.decode(logical, json.dumps(valid(logical)).encode())
        producer.send(logical, event)
        sent[logical] = event
    producer.flush()
    assert producer.delivered == len(VALID)
    for logical, event in sent.items():
        messages = read_topic(settings, topic_name(settings, logical))
        assert len(messages) == 1, logical
        assert schemas.decode(logical, messages[0].value()) == event
        assert messages[0].key() == schemas.key_of(logical, event)


def test_user_events_share_a_partition_per_user(settings, topics):
    producer = EventProducer(settings, component="test")
    for i in range(20):
        for user in ("alice", "bob", "carol"):
            payload = valid("clicks") | {"event_id": f"{user}-{i}", "user_id": user}
            assert producer.send_raw("clicks", json.dumps(payload).encode()) is None
    producer.flush()
    partitions: dict[bytes, set[int]] = {}
    for msg in read_topic(settings, topic_name(settings, "clicks")):
        partitions.setdefault(msg.key(), set()).add(msg.partition())
    assert set(partitions) == {b"alice", b"bob", b"carol"}
    assert all(len(p) == 1 for p in partitions.values())


@pytest.mark.parametrize("codec", ["none", "lz4", "gzip", "zstd"])
def test_every_codec_setting_round_trips(settings, topics, codec):
    """RECSYS_COMPRESSION reaches the producers, and the broker and our consumers take each codec."""
    settings = settings.model_copy(update={"compression": codec})
    producer = EventProducer(settings, component="test")
    events = [schemas.decode("clicks", json.dumps(valid("clicks") | {"event_id": f"e{i}"}).encode()) for i in range(50)]
    producer.send_many("clicks", events)
    producer.flush()
    received = sorted((schemas.decode("clicks", m.value()) for m in read_topic(settings, topic_name(settings, "clicks"))),
                      key=lambda e: int(e.event_id[1:]))
    assert received == events
