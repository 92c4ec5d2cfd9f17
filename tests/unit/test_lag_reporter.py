"""Consumer lag per logical topic from positions and cached high watermarks (pure logic, fake consumer)."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from stream.kafka.metrics import CONSUMER_LAG, LagReporter


class FakeConsumer:
    def __init__(self, positions: dict[tuple[str, int], int], highs: dict[tuple[str, int], int]) -> None:
        self.positions, self.highs = positions, highs

    def assignment(self):
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, partitions):
        return [TopicPartition(tp.topic, tp.partition, self.positions[(tp.topic, tp.partition)]) for tp in partitions]

    def get_watermark_offsets(self, tp, cached=False):
        return 0, self.highs[(tp.topic, tp.partition)]


def test_lag_is_summed_per_logical_topic_and_never_negative():
    consumer = FakeConsumer({("p.clicks", 0): 10, ("p.clicks", 1): 5, ("p.impressions", 0): -1001},
                            {("p.clicks", 0): 25, ("p.clicks", 1): 3, ("p.impressions", 0): 40})
    reporter = LagReporter("unit-test", {"p.clicks": "clicks", "p.impressions": "impressions"}, every=5.0)
    reporter.maybe_report(consumer, now=100.0)
    assert CONSUMER_LAG.labels("unit-test", "clicks")._value.get() == 15       # 15 + 0 (position ahead of cache)
    assert CONSUMER_LAG.labels("unit-test", "impressions")._value.get() == 0   # no position yet: not counted
    consumer.positions[("p.clicks", 0)] = 25
    reporter.maybe_report(consumer, now=102.0)                                 # within `every`: unchanged
    assert CONSUMER_LAG.labels("unit-test", "clicks")._value.get() == 15
    reporter.maybe_report(consumer, now=106.0)
    assert CONSUMER_LAG.labels("unit-test", "clicks")._value.get() == 0
