"""Scorer latency: per request in process and over HTTP, for 100 and 1000 candidates, and during hot swaps.

    python -m bench.scorer_latency [--calls N] [--json]

On the embedded broker with the default policy shape and the packaged MiniLM for
item text: a catalogue of 1000 simulated items on the ``items`` topic, a published
policy version, users with 20 recent experiences each (so every request runs the
per-user adaptation), and every served slate logged to ``impressions`` (part of the
measured cost). The swap stall is the latency of requests that overlapped a swap
(a new version prepared and swapped in while requests run), against the same load
without swaps.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import result
from bench.runner import run_benchmark
from models.encoders import TextEncoder
from models.policy import PolicyConfig, TwoTowerPolicy
from sim.world import World, WorldConfig
from stream import schemas
from stream.config import Settings
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.clients import make_admin
from stream.kafka.producer import EventProducer
from stream.kafka.topics import ensure_topics
from stream.policy.bus import LivePolicy, PolicyPublisher
from stream.policy.trust import new_key
from stream.serving.service import ScorerService


def _quantiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3)}


def measure(calls: int = 2000, items: int = 1000, progress=None, change_hazard: float = 0.0) -> dict:
    """``change_hazard``: the published version's ``PolicyConfig.change_hazard`` (the changepoint detector)."""
    say = progress or (lambda line: None)
    policy_config = PolicyConfig(change_hazard=change_hazard)
    torch.manual_seed(0)
    world = World(WorldConfig(seed=5, n_items=items))
    ids = [str(x) for x in world.catalog.item_ids]
    rng = np.random.default_rng(0)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix="bench-scorer.", hmac_key=new_key(),
                            data_dir=Path(tmp))
        ensure_topics(make_admin(settings), settings)
        with EventProducer(settings, "bench") as producer:
            for i in range(len(ids)):
                producer.send("items", schemas.decode("items", json.dumps(world.catalog.item_record(i, time.time()))))
        say(f"embedding {len(ids)} items with MiniLM and starting the scorer ...")
        service = ScorerService(settings, TextEncoder(), kafka_requests=False).start()
        scorer = service.scorer
        try:
            PolicyPublisher(settings, "bench").publish(TwoTowerPolicy(policy_config), 1)
            deadline = time.monotonic() + 60
            while scorer.version < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            users = [f"user-{u}" for u in range(200)]
            now = time.time()
            for user in users:
                for item in rng.choice(ids, 20, replace=False):
                    scorer.memory.record(user, str(item), int(rng.integers(0, 5)), float(rng.random() < 0.2), now)

            def request(n: int, i: int) -> schemas.ScoreRequest:
                # A catalogue smaller than n (tiny runs) tops up with items it does not list (scored without text).
                known = [str(x) for x in rng.choice(ids, min(n, len(ids)), replace=False)]
                return schemas.ScoreRequest(users[i % len(users)], known + [f"unlisted-{j}" for j in range(n - len(known))],
                                            schemas.Context(features=list(map(float, rng.normal(size=16)))), k=10)

            metrics: dict[str, float] = {}
            for n in (100, 1000):
                say(f"in process, {n} candidates ...")
                reqs = [request(n, i) for i in range(calls)]
                for r in reqs[:50]:
                    scorer.score(r)
                timings = []
                for r in reqs:
                    started = time.perf_counter()
                    scorer.score(r)
                    timings.append((time.perf_counter() - started) * 1000)
                metrics.update({f"inprocess_{n}_{k}": v for k, v in _quantiles(timings).items()})
                say(f"over HTTP, {n} candidates ...")
                conn = http.client.HTTPConnection("127.0.0.1", service.http.server_address[1], timeout=10)
                bodies = [schemas.encode(r) for r in reqs[:max(200, calls // 4)]]
                timings = []
                for body in bodies:
                    started = time.perf_counter()
                    conn.request("POST", "/score", body, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    timings.append((time.perf_counter() - started) * 1000)
                    assert resp.status == 200
                conn.close()
                metrics.update({f"http_{n}_{k}": v for k, v in _quantiles(timings).items()})

            say("hot swaps under load ...")
            metrics.update(_swap_stall(scorer, [request(100, i) for i in range(calls)]))
        finally:
            service.close()
    return result("scorer_latency", metrics, {"calls": calls, "catalogue_items": items, "slate_size": 10,
                                              "recent_experiences_per_user": 20, "policy": "default PolicyConfig",
                                              "change_hazard": change_hazard,
                                              "torch_threads": torch.get_num_threads()})


def _swap_stall(scorer, reqs: list[schemas.ScoreRequest], swaps: int = 10) -> dict[str, float]:
    """Latency of requests that overlapped a swap vs the same load without swaps."""
    def header(version: int) -> schemas.PolicyHeader:
        return schemas.PolicyHeader(name="bench", version=version, created_at=time.time(), checksum="0" * 64,
                                    total_bytes=1, n_chunks=1)

    lives = [LivePolicy(100 + i, TwoTowerPolicy(PolicyConfig()), header(100 + i), time.time()) for i in range(swaps)]
    records: list[tuple[float, float, float]] = []
    windows: list[tuple[float, float]] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            try:
                scorer.score(reqs[i % len(reqs)])
            except Exception as exc:  # noqa: BLE001 - counted: a swap must never fail a request
                failures.append(repr(exc))
            ended = time.perf_counter()
            records.append((started, ended, (ended - started) * 1000))
            i += 1

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(1.0)
    for live in lives:
        started = time.perf_counter()
        scorer.swap(live)
        windows.append((started, time.perf_counter()))
        time.sleep(0.3)
    stop.set()
    worker.join()
    during = [ms for s, e, ms in records if any(s <= we and e >= ws for ws, we in windows)]
    quiet = [ms for s, e, ms in records if not any(s <= we + 0.05 and e >= ws - 0.05 for ws, we in windows)]
    build = [(we - ws) * 1000 for ws, we in windows]
    return {"swap_prepare_p50_ms": round(float(np.median(build)), 3), "swap_prepare_max_ms": round(max(build), 3),
            "swap_overlapping_requests": len(during),
            "swap_overlapping_p99_ms": round(float(np.percentile(during, 99)), 3) if during else None,
            "swap_overlapping_max_ms": round(max(during), 3) if during else None,
            "no_swap_p99_ms": round(float(np.percentile(quiet, 99)), 3),
            "swaps": len(windows), "versions_served_after": scorer.version, "failed_during_swaps": len(failures)}


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--calls", type=int, default=2000)
        parser.add_argument("--items", type=int, default=1000)
        parser.add_argument("--change-hazard", type=float, default=0.0,
                            help="serve a version with this changepoint hazard (models/changepoint.py; 0: off)")

    def run(args, say):
        return measure(args.calls, args.items, say, args.change_hazard)

    def summary(out):
        m = out["metrics"]
        return (f"in process p50/p99: {m['inprocess_100_p50_ms']}/{m['inprocess_100_p99_ms']} ms (100 candidates), "
                f"{m['inprocess_1000_p50_ms']}/{m['inprocess_1000_p99_ms']} ms (1000); HTTP "
                f"{m['http_100_p50_ms']}/{m['http_100_p99_ms']} ms (100), {m['http_1000_p50_ms']}/"
                f"{m['http_1000_p99_ms']} ms (1000); swap prepare {m['swap_prepare_p50_ms']} ms, requests overlapping "
                f"a swap p99 {m['swap_overlapping_p99_ms']} ms vs {m['no_swap_p99_ms']} ms without")

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    raise SystemExit(main())
