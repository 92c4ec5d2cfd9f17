"""Every kind of invalid input ends on the dead-letter topic with its reason and origin."""

from __future__ import annotations

import json

from confluent_kafka import Consumer, TopicPartition

from stream import schemas
from stream.kafka.clients import consumer_config, make_producer
from stream.kafka.dead_letters import DeadLetters
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from tests.events import valid


def _payload(logical: str, **changes) -> bytes:
    payload = valid(logical)
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    return json.dumps(payload).encode()


INVALID = [
    # (topic, raw bytes, expected reason, text expected in the error)
    ("clicks", b'{"event_id": "c1", "user_id": ', "malformed_json", "not valid JSON"),
    ("clicks", _payload("clicks", ts="yesterday"), "schema", "ts"),
    ("clicks", _payload("clicks", user_id=None), "schema", "user_id"),
    ("purchases", _payload("purchases", value=-5), "schema", "value"),
    ("impressions", json.dumps(valid("impressions") | {
        "shown": [{"item_id": "i1", "position": 0, "propensity": 0}]}).encode(), "schema", "propensity"),
    ("impressions", json.dumps(valid("impressions") | {
        "shown": [{"item_id": "i1", "position": 0, "propensity": 1.5}]}).encode(), "schema", "propensity"),
    ("items", _payload("items", description="x" * (schemas.MAX_ITEM_BYTES + 1)), "oversized", "limit"),
]


def _letters(settings) -> list[schemas.DeadLetter]:
    return [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]


def test_producer_side_validation_dead_letters_each_invalid_kind(settings, topics):
    producer = EventProducer(settings, component="test")
    for number, (logical, raw, reason, _) in enumerate(INVALID, start=1):
        assert producer.send_raw(logical, raw, line=number) == reason
    producer.flush()
    letters = sorted(_letters(settings), key=lambda d: d.line)
    assert len(letters) == len(INVALID)
    for letter, (logical, raw, reason, text) in zip(letters, INVALID):
        assert letter.source_topic == topic_name(settings, logical)
        assert letter.reason == reason
        assert text in letter.error
        assert letter.component == "test"
        assert letter.original_size == len(raw)
        assert raw.startswith(letter.original)
    # Nothing invalid leaked into the real topics.
    for logical in ("clicks", "purchases", "impressions", "items"):
        assert read_topic(settings, topic_name(settings, logical)) == []


def test_consumer_side_validation_dead_letters_with_source_coordinates(settings, topics):
    """Garbage written straight to a topic (bypassing validation) is caught where it is read."""
    raw_producer = make_producer(settings, "rogue")
    clicks = topic_name(settings, "clicks")
    good = _payload("clicks")
    batch = [good, b"not json at all", _payload("clicks", item_id=7), good]
    for value in batch:
        raw_producer.produce(clicks, key=b"u1", value=value)
    assert raw_producer.flush(30) == 0

    consumer = Consumer(consumer_config(settings, "test", "dlq-test"))
    sink_producer = make_producer(settings, "test")
    sink = DeadLetters(settings, "process", sink_producer)
    partition = next(m.partition() for m in read_topic(settings, clicks))
    consumer.assign([TopicPartition(clicks, partition, 0)])
    decoded = []
    try:
        while len(decoded) < len(batch):
            msg = consumer.poll(10)
            assert msg is not None and not msg.error()
            decoded.append((msg.offset(), sink.decode_or_dead_letter("clicks", msg)))
    finally:
        consumer.close()
    assert sink_producer.flush(30) == 0
    assert [event is not None for _, event in decoded] == [True, False, False, True]
    letters = sorted(_letters(settings), key=lambda d: d.offset)
    assert [(d.source_topic, d.partition, d.offset, d.reason) for d in letters] == [
        (clicks, partition, decoded[1][0], "malformed_json"),
        (clicks, partition, decoded[2][0], "schema"),
    ]
    assert letters[0].original == b"not json at all" and letters[0].key == b"u1"
    assert letters[1].component == "process"
