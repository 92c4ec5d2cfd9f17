"""One way for tests to wait: poll a condition until it holds, or fail saying what never happened.

Tests never sleep for a fixed time to let something happen; they wait for the state
that proves it happened (a row count, a metric, a committed offset). Waiting for
"nothing more arrives" uses ``committed_offsets``: once a consumer group has committed
past every input record, whatever it would have produced from them has been produced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest


def wait_for(condition: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.2,
             logs: Iterable[Path] = (), ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """The first truthy value of ``condition()``; fails the test after ``timeout`` seconds.

    ``logs`` are files whose tails are shown in the failure (a subprocess's stderr);
    exceptions of the ``ignore`` types count as "not yet" (a server still starting).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = condition()
        except ignore:
            got = None
        if got:
            return got
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{tails}" if tails else ""))


def committed_offsets(settings, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic``, by partition (missing: nothing committed)."""
    from confluent_kafka import Consumer, TopicPartition

    from stream.kafka.clients import consumer_config

    consumer = Consumer(consumer_config(settings, "test", group))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in metadata.partitions]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10) if tp.offset >= 0}
    finally:
        consumer.close()


def end_offsets(settings, topic: str) -> dict[int, int]:
    """How many records each partition of ``topic`` holds now (from partition EOF, as the snapshot reader does)."""
    from stream.kafka.snapshot import read_topic

    ends: dict[int, int] = {}
    for msg in read_topic(settings, topic):
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
    return ends


def wait_until_consumed(settings, group: str, topic: str, timeout: float, what: str) -> None:
    """Wait until ``group`` has committed past every record ``topic`` holds now."""
    ends = end_offsets(settings, topic)
    wait_for(lambda: all(committed_offsets(settings, group, topic).get(p, 0) >= end for p, end in ends.items()),
             timeout, what)
