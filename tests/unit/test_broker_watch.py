"""The broker watch: each level's warning carries its figure, comes once per repeat interval, and the CPU
share is measured over whole windows (sampled here on this test's own process)."""

from __future__ import annotations

import os

from stream.ops.broker_watch import BROKER_CPU, BrokerWatch, WatchLevels


def busy(seconds: float) -> None:
    import time
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_memory_past_its_level_warns_with_the_figure_once_per_repeat():
    watch = BrokerWatch(os.getpid(), WatchLevels(resident_bytes=1, cpu_cores=1e9, window=1e9, repeat=600), now=0.0)
    first = watch.sample(now=60.0)
    assert len(first) == 1 and "MB after 1 min" in first[0] and "real Kafka" in first[0]
    assert watch.sample(now=120.0) == []            # within the repeat interval
    assert len(watch.sample(now=700.0)) == 1        # still past it 10 minutes later: said again


def test_cpu_share_is_measured_over_a_window_and_warned_past_its_level():
    watch = BrokerWatch(os.getpid(), WatchLevels(resident_bytes=2**62, cpu_cores=0.01, window=0.2), now=0.0)
    busy(0.3)
    assert watch.sample(now=0.1) == []              # the window is not over: no share yet
    warnings = watch.sample(now=1.0)                # 0.3 s of CPU over 1 s: 0.3 cores
    assert len(warnings) == 1 and "cores over the last" in warnings[0]
    assert 0.2 < BROKER_CPU._value.get() < 1.5


def test_a_quiet_broker_is_not_warned_about():
    watch = BrokerWatch(os.getpid(), WatchLevels(resident_bytes=2**62, cpu_cores=64.0, window=0.0), now=0.0)
    assert watch.sample(now=10.0) == []


def test_a_census_is_exported_per_topic_and_named_in_the_warnings():
    from stream.kafka.batch_census import Held
    from stream.ops.broker_watch import BROKER_BATCHES

    watch = BrokerWatch(os.getpid(), WatchLevels(resident_bytes=1, cpu_cores=1e9, window=1e9), now=0.0)
    assert watch.holding() == ""                    # before the first census: nothing to say
    watch.observe_census({"t.impressions": Held(1200, 7000, 3_000_000), "t.clicks": Held(900, 4000, 500_000),
                          "t.items": Held(0, 0, 0)})
    assert BROKER_BATCHES.labels("t.impressions")._value.get() == 1200
    warning = watch.sample(now=60.0)[0]
    assert "it holds 2,100 batches (most: t.impressions 1,200, t.clicks 900)" in warning
    watch.observe_census({"t.clicks": Held(950, 4100, 520_000)})        # t.impressions was deleted
    assert ("t.impressions",) not in BROKER_BATCHES._metrics
