"""Scoring at a fixed offered load, over HTTP or over Kafka: requests/s answered and request -> response latency.

    python -m bench.scorer_transport [--transport http|kafka] [--rate R] [--seconds S] [--json]
    recsys-stream bench scorer --transport kafka --rate 500

The scorer is the production role, `recsys-stream score`, in its own process on the
embedded broker, with a published policy version and a catalogue of simulated items
embedded by the packaged MiniLM (``--items``, 1,000). The client offers requests at a
constant rate (open loop: a slow answer does not slow the offered load) with
``--candidates`` (100) and k = 10.
Over Kafka, a request is timed from the moment it is handed to the producer to the
moment its response is read from ``score-responses``; over HTTP, from the request
write to the end of the response, on ``--clients`` keep-alive connections.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from bench.machine import result
from bench.runner import run_benchmark, stop_processes
from models.policy import PolicyConfig, TwoTowerPolicy
from sim.world import World, WorldConfig
from stream import schemas
from stream.config import Settings, child_environment
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.clients import base_config, make_admin
from stream.kafka.producer import EventProducer
from stream.kafka.topics import ensure_topics, partitions_of, topic_name
from stream.policy.bus import PolicyPublisher
from stream.policy.trust import new_key
from stream.serving.kafka_transport import read_available


def _requests(ids: list[str], n: int, candidates: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"request_id": f"b-{i}-{uuid.uuid4().hex[:6]}", "user_id": f"user-{i % 500}", "k": 10,
             "candidates": [str(x) for x in rng.choice(ids, min(candidates, len(ids)), replace=False)]}
            for i in range(n)]


def _start_scorer(settings: Settings, port: int, log: Path) -> subprocess.Popen:
    env = child_environment(settings, RECSYS_SCORING_PARTITIONS=str(partitions_of(settings, "score-requests")))
    return subprocess.Popen([sys.executable, "-m", "stream", "score", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _wait_ready(port: int, version: int, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the scorer exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                health = json.loads(resp.read())
            if health["status"] == "ok" and health["policy_version"] >= version:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the scorer was not ready within {timeout:.0f}s:\n{log.read_text()[-2000:]}")


def _quantiles(latencies_ms: list[float]) -> dict[str, float | None]:
    if not latencies_ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(latencies_ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def _over_kafka(settings: Settings, bodies: list[dict], rate: float, say) -> tuple[list[float], int, float]:
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    sent_at: dict[str, float] = {}          # request_id -> when it was handed to the producer
    timed = {b["request_id"] for b in bodies}
    latencies: list[float] = []
    warm_answered: set[str] = set()
    answered: set[str] = set()
    counts: dict[str, float] = {"errors": 0, "last_answer": 0.0}
    done = threading.Event()
    responses = topic_name(settings, "score-responses")
    consumer = Consumer({**base_config(settings, "bench-client"), "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                         "fetch.min.bytes": 1})
    consumer.assign([TopicPartition(responses, p, OFFSET_END)
                     for p in range(partitions_of(settings, "score-responses"))])

    def read() -> None:
        while not done.is_set():
            for msg in read_available(consumer, 500, 0.05):
                if msg.error() is not None:
                    continue
                got = time.perf_counter()
                response = schemas.decode("score-responses", msg.value())
                request_id = response.request_id
                if request_id not in timed:
                    warm_answered.add(request_id)
                elif request_id not in answered and request_id in sent_at:
                    answered.add(request_id)
                    latencies.append((got - sent_at[request_id]) * 1000)
                    counts["errors"] += response.error is not None
                    counts["last_answer"] = got
            if len(answered) == len(bodies):
                done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1.0)          # the reader has resolved the end of score-responses before anything is asked
    # A latency-sensitive client: requests wait at most 1 ms to share a produce request.
    producer = Producer({**base_config(settings, "bench-client"), "linger.ms": 1, "acks": 1})
    topic = topic_name(settings, "score-requests")
    # Warm-up, not timed: until the scorer's group owns every partition, requests wait for it.
    warm = [dict(b, request_id=f"warm-{i}-{uuid.uuid4().hex[:6]}", user_id=f"warm-user-{i}")
            for i, b in enumerate(bodies[:50])]
    for body in warm:
        producer.produce(topic, key=body["user_id"].encode(), value=json.dumps(body).encode())
    producer.flush(30)
    deadline = time.monotonic() + 120
    while not {b["request_id"] for b in warm} <= warm_answered:
        if time.monotonic() > deadline:
            done.set()
            raise TimeoutError("the scorer answered no warm-up request over Kafka within 120 s")
        time.sleep(0.1)
    if say:
        say("  warm-up answered; timing starts")
    encoded = [(b["request_id"], b["user_id"].encode(), json.dumps(b).encode()) for b in bodies]
    started = time.perf_counter()
    for i, (request_id, key, value) in enumerate(encoded):
        due = started + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(0.002, due - now))
        sent_at[request_id] = time.perf_counter()
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
        if say and i and i % (int(rate) * 5) == 0:
            say(f"  {i}/{len(bodies)} sent, {len(answered)} answered")
    producer.flush(30)
    done.wait(60)
    done.set()
    reader.join(5)
    consumer.close()
    # Answered per second from the first request to the last answer: a backlog shows as a lower rate.
    return latencies, int(counts["errors"]), len(answered) / max(counts["last_answer"] - started, 1e-9)


def _over_http(port: int, bodies: list[dict], rate: float, clients: int, say) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    started = time.perf_counter()

    def client(index: int) -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = list(range(index, len(bodies), clients))
        payloads = {i: json.dumps(bodies[i]).encode() for i in mine}
        for i in mine:
            due = started + i / rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(0.002, due - now))
            t0 = time.perf_counter()
            conn.request("POST", "/score", payloads[i], {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += resp.status != 200
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if say:
        say(f"  {len(latencies)} answered in {elapsed:.1f}s")
    return latencies, errors, len(latencies) / elapsed


def measure(transport: str = "kafka", rate: float = 500.0, seconds: float = 20.0, candidates: int = 100,
            clients: int = 4, items: int = 1000, progress=None, partitions: int | None = None) -> dict:
    """``partitions``: of the scoring topics (None: ``RECSYS_SCORING_PARTITIONS``, else ``RECSYS_PARTITIONS``)."""
    if transport not in ("http", "kafka"):
        raise ValueError(f"transport must be http or kafka, not {transport!r}")
    if rate < 1 or seconds < 1:
        raise ValueError(f"rate and seconds must be at least 1, not {rate:g}/s for {seconds:g}s")
    if not 1 <= items <= 100_000:
        raise ValueError(f"items must be between 1 and 100,000, not {items}")
    if not 1 <= candidates <= min(items, 1000):
        raise ValueError(f"candidates must be between 1 and {min(items, 1000)} (at most 1,000 and the "
                         f"catalogue's {items} items), not {candidates}")
    if not 1 <= clients <= 64:
        raise ValueError(f"clients must be between 1 and 64, not {clients}")
    if partitions is not None and not 1 <= partitions <= 1024:
        raise ValueError(f"partitions must be between 1 and 1024, not {partitions}")
    say = progress or (lambda line: None)
    world = World(WorldConfig(seed=5, n_items=items))
    ids = [str(x) for x in world.catalog.item_ids]
    bodies = _requests(ids, int(rate * seconds), candidates)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"bench-{transport}.", hmac_key=new_key(),
                            data_dir=Path(tmp) / "data",
                            **({} if partitions is None else {"scoring_partitions": partitions}))
        ensure_topics(make_admin(settings), settings)
        with EventProducer(settings, "bench") as producer:
            for i in range(len(ids)):
                producer.send("items", schemas.decode("items", json.dumps(world.catalog.item_record(i, time.time()))))
        PolicyPublisher(settings, "bench").publish(TwoTowerPolicy(PolicyConfig()), 1)
        port, log = free_port(), Path(tmp) / "score.log"
        say(f"starting `recsys-stream score` ({len(ids)} items to embed) ...")
        proc = _start_scorer(settings, port, log)
        try:
            _wait_ready(port, 1, proc, log)
            say(f"offering {rate:g} requests/s for {seconds:g}s over {transport} ...")
            if transport == "kafka":
                latencies, errors, answered_rate = _over_kafka(settings, bodies, rate, say)
            else:
                latencies, errors, answered_rate = _over_http(port, bodies, rate, clients, say)
        finally:
            stop_processes(proc)
    return result("scorer_transport", {
        "offered_requests_per_s": rate, "answered_requests_per_s": round(answered_rate, 1),
        "requests": len(bodies), "answered": len(latencies), "errors": errors,
        **{f"request_to_response_{k}": v for k, v in _quantiles(latencies).items()},
    }, {"transport": transport, "seconds": seconds, "candidates": candidates, "k": 10,
        "http_clients": clients if transport == "http" else None, "catalogue_items": items,
        "scorer": "recsys-stream score (own process)", "broker": "embedded Tansu", "partitions": partitions_of(settings, "score-requests")})


def summary(out: dict) -> str:
    m, p = out["metrics"], out["params"]
    return (f"{p['transport']}: offered {m['offered_requests_per_s']:g}/s, answered {m['answered_requests_per_s']}/s "
            f"({m['answered']}/{m['requests']}, {m['errors']} errors); request -> response p50 "
            f"{m['request_to_response_p50_ms']} ms, p99 {m['request_to_response_p99_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    """The argparse entry; `recsys-stream bench scorer` is the same measure() and summary() behind click."""

    def configure(parser):
        parser.add_argument("--transport", choices=["http", "kafka"], default="kafka")
        parser.add_argument("--rate", type=float, default=500.0)
        parser.add_argument("--seconds", type=float, default=20.0)
        parser.add_argument("--candidates", type=int, default=100)
        parser.add_argument("--clients", type=int, default=4)
        parser.add_argument("--items", type=int, default=1000,
                            help="catalogue size: the scorer embeds each item's text before it serves")
        parser.add_argument("--partitions", type=int, default=None,
                            help="partitions of score-requests and score-responses (default: the settings')")

    def run(args, say):
        try:
            return measure(args.transport, args.rate, args.seconds, args.candidates, args.clients, args.items,
                           progress=say, partitions=args.partitions)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    raise SystemExit(main())
