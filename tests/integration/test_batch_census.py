"""The batch census over the wire: every flushed batch counted once, a census behind the newest
offsets, a deleted topic forgotten; and `recsys-stream broker` exporting it."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from stream.kafka.batch_census import BatchCensus
from stream.kafka.broker import free_port
from stream.kafka.clients import make_admin
from tests.conftest import cli_command
from tests.integration.test_broker import metrics_url


def produce_batches(bootstrap: str, topic: str, batches: int, per_batch: int, partition: int = 0) -> None:
    """``batches`` batches of ``per_batch`` records: a flush ends each one."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1000})
    for _ in range(batches):
        for i in range(per_batch):
            producer.produce(topic, value=b"v" * 40, key=str(i).encode(), partition=partition)
        assert producer.flush(10) == 0


def create(settings, name: str, partitions: int) -> str:
    topic = f"{settings.topic_prefix}{name}"
    admin = make_admin(settings)          # held: a destroyed client fails its futures
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(10)
    return topic


def test_every_batch_is_counted_once_a_census_behind(settings):
    topic = create(settings, "census", 2)
    produce_batches(settings.bootstrap_servers, topic, 4, 3, partition=0)
    produce_batches(settings.bootstrap_servers, topic, 2, 5, partition=1)
    host, port = settings.bootstrap_servers.rsplit(":", 1)
    with BatchCensus(host, int(port)) as census:
        assert census.update({topic: 2})[topic].batches == 0        # the first census only learns where the end is
        held = census.update({topic: 2})[topic]
        assert (held.batches, held.records) == (6, 22) and held.bytes > 22 * 40 * 0.05
        produce_batches(settings.bootstrap_servers, topic, 3, 2, partition=1)
        assert census.update({topic: 2})[topic].batches == 6         # newer than the last census's end
        held = census.update({topic: 2})[topic]
        assert (held.batches, held.records) == (9, 28)
        assert census.update({topic: 2})[topic].batches == 9         # counted once, however often it looks
        assert topic not in census.update({})                        # a topic no longer listed holds nothing


def test_broker_command_exports_the_batches_each_topic_holds(settings):
    port = free_port()
    proc = subprocess.Popen(cli_command("broker", "--port", str(port), "--metrics-port", "0", "--census-seconds", "0.5"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = metrics_url(proc)
        local = settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{port}"})
        topic = create(local, "census", 1)
        produce_batches(local.bootstrap_servers, topic, 5, 3)
        deadline, text = time.monotonic() + 30, ""
        while f'recsys_broker_held_batches{{topic="{topic}"}} 5.0' not in text:
            assert time.monotonic() < deadline, f"no census of 5 batches within 30 s:\n{text[-2000:]}"
            time.sleep(0.5)
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        assert f'recsys_broker_held_records{{topic="{topic}"}} 15.0' in text
        assert "recsys_broker_census_errors_total 0.0" in text and "recsys_broker_census_unread_offsets 0.0" in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
