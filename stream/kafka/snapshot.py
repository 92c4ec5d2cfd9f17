"""Read a topic from its beginning up to its end as of now, without joining a group.

For inspection commands and tests: partitions are assigned directly (no group
rebalance to wait for) and reading stops at each partition's end as first seen,
so the call is deterministic and never waits for traffic that may not come.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream.config import Settings
from stream.kafka.clients import consumer_config


def read_topic(settings: Settings, topic: str, role: str = "snapshot", timeout: float = 30.0,
               partitions: list[int] | None = None) -> list[Message]:
    """All messages currently in ``topic`` (a full topic name; only ``partitions`` when given), in
    partition then offset order.

    The end of each partition is taken from the fetch responses (partition EOF), not
    from ListOffsets: the embedded Tansu answers ListOffsets(latest) with the base
    offset of the last record batch + 1, which undercounts batched writes.
    """
    conf = consumer_config(
        settings, role, f"{role}-{uuid.uuid4().hex}",
        **{"enable.auto.commit": False, "enable.partition.eof": True},
    )
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(topic, timeout=timeout)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(meta.error if meta is not None else f"no topic {topic}")
        partitions = sorted(meta.partitions) if partitions is None else sorted(partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: dict[int, list[Message]] = {p: [] for p in partitions}
        pending = set(partitions)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end within {timeout:.0f}s")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise KafkaException(err)
            if msg.partition() in pending:
                out[msg.partition()].append(msg)
        return [m for p in partitions for m in out[p]]
    finally:
        consumer.close()


def read_decoded(settings: Settings, logical: str, role: str = "snapshot", timeout: float = 30.0) -> tuple[list, int]:
    """(valid records, invalid ones skipped) of a logical topic as it stands now: what a report reads (the
    replay service dead-letters the invalid ones; they judge nothing)."""
    from stream import schemas
    from stream.kafka.topics import topic_name

    good, bad = [], 0
    for msg in read_topic(settings, topic_name(settings, logical), role, timeout=timeout):
        try:
            good.append(schemas.decode(logical, msg.value()))
        except schemas.InvalidMessage:
            bad += 1
    return good, bad
