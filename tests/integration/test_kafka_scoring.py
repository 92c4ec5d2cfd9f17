"""Scoring over Kafka under load: two scorers in one group, two producers, one scorer SIGKILLed mid-run.

Every request is answered (or answered with an error) exactly once while both scorers
live; after the kill, every request still gets an answer (duplicates are counted, never
a loss); nested and malformed requests are dead-lettered and the transport goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition

from stream import schemas
from stream.kafka.broker import free_port
from stream.kafka.clients import base_config
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import partitions_of, topic_name
from tests.conftest import cli_command, scraped, stop_processes
from tests.waiting import end_offsets, wait_for, wait_until_consumed

CANDIDATES = [f"item-{i}" for i in range(20)]


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:       # 503 while the Kafka transport is down
        return json.loads(err.read())
    except OSError:
        return None


def kafka_answered(port: int) -> float:
    return scraped(port, "recsys_scorer_requests_total", 'transport="kafka"')


class Responses(threading.Thread):
    """Reads score-responses from the start, counting answers per request_id."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.answers: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.invalid: list[str] = []
        self.positions: dict[int, int] = {}     # next offset per partition of score-responses

    def run(self) -> None:
        topic = topic_name(self.settings, "score-responses")
        consumer = Consumer({**base_config(self.settings, "test"), "group.id": f"reader-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions_of(self.settings, "score-responses"))])
        try:
            while not self.stopping.is_set():
                for msg in consumer.consume(500, 0.1):
                    if msg.error() is not None:
                        continue
                    with self.lock:
                        self.positions[msg.partition()] = msg.offset() + 1
                    try:
                        response = schemas.decode("score-responses", msg.value())
                    except schemas.InvalidMessage as exc:
                        self.invalid.append(f"{exc}: {msg.value()[:200]!r}")
                        continue
                    with self.lock:
                        self.answers[response.request_id] += 1
                        if response.error:
                            self.errors[response.error.split(":")[0]] += 1
        finally:
            consumer.close()

    def missing(self, sent: set[str]) -> set[str]:
        with self.lock:
            return {r for r in sent if self.answers[r] == 0}

    def settle(self, logs) -> None:
        """Wait until no answer can still arrive: the scorers have committed past every request (so none
        is answered again while they live), and every response on the topic has been read."""
        wait_until_consumed(self.settings, f"{self.settings.topic_prefix}scorer",
                            topic_name(self.settings, "score-requests"), 60,
                            "the scorers to commit past every request")
        ends = end_offsets(self.settings, topic_name(self.settings, "score-responses"))

        def read_to_end() -> bool:
            with self.lock:
                return all(self.positions.get(p, 0) >= end for p, end in ends.items())

        wait_for(read_to_end, 60, "every response on the topic to be read", logs=logs)


def where_stored(settings, missing: set[str]) -> dict:
    """For a failure's message: where each missing request lies on ``score-requests`` (partition, offset), how
    many records each partition holds, and the scorers' committed offsets, to tell a broker loss from a skip."""
    topic = topic_name(settings, "score-requests")
    stored = read_topic(settings, topic)
    found = {}
    for msg in stored:
        try:
            request_id = json.loads(msg.value()).get("request_id")
        except ValueError:
            continue
        if request_id in missing:
            found[request_id] = (msg.partition(), msg.offset())
    held = Counter(msg.partition() for msg in stored)
    last = {p: max(m.offset() for m in stored if m.partition() == p) for p in held}
    consumer = Consumer({**base_config(settings, "test"), "group.id": f"{settings.topic_prefix}scorer"})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions_of(settings, "score-requests"))],
                                       timeout=10)
        commits = {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()
    return {"found": found, "not_on_topic": sorted(missing - found.keys())[:10], "records": dict(held),
            "last_offset": last, "committed": commits}


def produce(settings, ids: list[str], seconds: float, sent: set[str], lock: threading.Lock,
            refused: list[str]) -> None:
    """Paced requests from an independent client, keyed by user as any producer would; a request
    counts as sent once the broker acknowledged it."""
    producer = Producer({**base_config(settings, "client"), "linger.ms": 2, "enable.idempotence": True})
    topic = topic_name(settings, "score-requests")

    def delivered(err, msg) -> None:
        request_id = json.loads(msg.value())["request_id"]
        with lock:
            if err is None:
                sent.add(request_id)
            else:
                refused.append(f"{request_id}: {err.str()}")

    started = time.monotonic()
    for i, request_id in enumerate(ids):
        body = {"request_id": request_id, "user_id": f"user-{i % 97}", "candidates": CANDIDATES, "k": 5}
        producer.produce(topic, key=body["user_id"].encode(), value=json.dumps(body).encode(), on_delivery=delivered)
        producer.poll(0)
        delay = started + (i + 1) * seconds / len(ids) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    assert producer.flush(30) == 0


def start_scorer(cli_env, port: int, log) -> subprocess.Popen:
    return subprocess.Popen(cli_command("score", "--port", str(port)), env=dict(cli_env, RECSYS_LOG_LEVEL="INFO"),
                            stdout=subprocess.DEVNULL,
                            stderr=log.open("a"))


REFUSED: list[str] = []      # requests the broker did not acknowledge (not counted as sent)


def send_in_parallel(settings, prefix: str, per_producer: int, seconds: float, sent: set[str],
                     lock: threading.Lock, during=None) -> None:
    threads = [threading.Thread(target=produce, args=(settings, [f"{prefix}-{p}-{i}" for i in range(per_producer)],
                                                       seconds, sent, lock, REFUSED)) for p in range(2)]
    for t in threads:
        t.start()
    if during is not None:
        during()
    for t in threads:
        t.join(seconds + 60)


def test_two_scorers_answer_every_request_and_survive_one_being_killed(settings, topics, cli_env, tmp_path):
    ports = [free_port(), free_port()]
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    scorers = [start_scorer(cli_env, port, log) for port, log in zip(ports, logs)]
    reader = Responses(settings)
    reader.start()
    sent: set[str] = set()
    lock = threading.Lock()
    try:
        for port in ports:
            wait_for(lambda port=port: (h := health(port)) and h["kafka_transport"]["up"], 120,
                     f"the scorer on {port} to serve with its Kafka transport up", logs=logs)
        # Warm-up until both members of the group have answered: the group is settled.
        warm = 0
        while not all(kafka_answered(port) > 0 for port in ports):
            send_in_parallel(settings, f"warm{warm}", 20, 0.5, sent, lock)
            warm += 1
            assert warm < 60, "both scorers never took a partition"
        wait_for(lambda: not reader.missing(sent), 60, "every warm-up request to be answered", logs=logs)

        # 1. Both live: thousands of requests from two producers, each answered exactly once.
        before = set(sent)
        send_in_parallel(settings, "live", 1500, 10.0, sent, lock)
        phase = sent - before
        try:
            wait_for(lambda: not reader.missing(phase), 60, "every request to be answered while both scorers live",
                     logs=logs)
        except BaseException:
            missing = reader.missing(phase)
            print("diagnostics: missing", len(missing), sorted(missing)[:10], [kafka_answered(p) for p in ports],
                  len(sent), sum(reader.answers.values()), reader.invalid[:3], reader.is_alive(), REFUSED[:3])
            print("where the missing requests are:", where_stored(settings, missing))
            raise
        reader.settle(logs)
        with reader.lock:
            repeats = {r: n for r, n in reader.answers.items() if r in phase and n != 1}
        assert not repeats, f"{len(repeats)} requests answered more than once while both scorers lived"

        # 2. One scorer SIGKILLed mid-run: its partitions move and every request still gets an answer.
        before = set(sent)

        def kill_midway() -> None:
            time.sleep(4.0)
            os.kill(scorers[1].pid, signal.SIGKILL)
            scorers[1].wait(10)

        send_in_parallel(settings, "kill", 1500, 10.0, sent, lock, during=kill_midway)
        phase = sent - before
        try:
            wait_for(lambda: not reader.missing(phase), 120, "every request to be answered after the kill", logs=logs)
        except BaseException:
            missing = reader.missing(phase)
            print("diagnostics after the kill: missing", len(missing), sorted(missing)[:10], [kafka_answered(p) for p in ports[:1]],
                  len(sent), sum(reader.answers.values()), reader.invalid[:3], reader.is_alive(), REFUSED[:3])
            print("where the missing requests are:", where_stored(settings, missing))
            raise
        reader.settle(logs)
        with reader.lock:
            twice = {r for r, n in reader.answers.items() if r in phase and n == 2}
            more = {r: n for r, n in reader.answers.items() if r in phase and n > 2}
        # Only what the killed scorer answered but had not committed (at most its last half-second of
        # requests, COMMIT_INTERVAL) is answered again, once, by the survivor.
        assert not more, f"{len(more)} requests answered more than twice"
        assert len(twice) <= len(phase) // 5, f"{len(twice)} of {len(phase)} requests answered twice"
        print(f"after the kill: {len(phase)} requests, {len(twice)} answered twice")

        # 3. Poison: nested and malformed requests are dead-lettered; the survivor keeps answering.
        producer = Producer(base_config(settings, "client"))
        topic = topic_name(settings, "score-requests")
        nested = b'{"user_id": "u", "candidates": ["a"], "x": ' + b"[" * 2000 + b"]" * 2000 + b"}"
        for raw in (nested, b'{"user_id": "u", "candidates": ', b'{"user_id": "u", "candidates": []}'):
            for partition in range(partitions_of(settings, "score-requests")):
                producer.produce(topic, value=raw, partition=partition)
        assert producer.flush(10) == 0
        before = set(sent)
        send_in_parallel(settings, "after-poison", 100, 1.0, sent, lock)
        wait_for(lambda: not reader.missing(sent - before), 60, "answers after the poison", logs=logs)

        def malformed_letters() -> int:
            letters = [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]
            return sum(d.component == "scorer" and d.reason == "malformed_json" for d in letters)

        wait_for(lambda: malformed_letters() >= 2 * partitions_of(settings, "score-requests"), 30, "the poison to be dead-lettered")
        assert health(ports[0])["status"] == "ok" and health(ports[0])["kafka_transport"]["restarts"] == 0
        assert scorers[0].poll() is None
    finally:
        reader.stopping.set()
        stop_processes(*scorers)
    assert scorers[0].returncode == 0, logs[0].read_text()[-3000:]
