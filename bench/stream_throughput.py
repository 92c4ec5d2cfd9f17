"""Sustained events/s through the reward join into the replay store, and click-to-experience delay.

    python -m bench.stream_throughput [--requests N] [--json]

Starts the embedded broker, the processor (`recsys-stream process`) and the replay
service (`recsys-stream replay`) as their own processes, waits until a warm-up
click has made it all the way, then writes simulated traffic as fast as the
producer goes and times until the replay store holds every expected experience.
Delay: Kafka CreateTime of each click to CreateTime of its click experience.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import result
from bench.runner import run_benchmark, stop_processes

T0 = 1_763_900_000.0


def _impression(request: str, user: str, ts: float) -> dict:
    return {"event_id": f"imp-{request}", "request_id": request, "user_id": user, "ts": ts, "policy_version": 0,
            "shown": [{"item_id": "item-0", "position": 0, "propensity": 1.0}]}


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def measure(requests: int = 20_000, progress=None) -> dict:
    from sim.traffic import generate
    from sim.world import World, WorldConfig
    from stream.config import Settings
    from stream.kafka.broker import EmbeddedBroker, die_with_parent
    from stream.kafka.clients import make_admin
    from stream.kafka.producer import EventProducer
    from stream.kafka.snapshot import read_topic
    from stream.kafka.topics import ensure_topics, topic_name
    from stream.replay.service import default_store_path
    from stream.replay.store import count_stored

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="recsys-stream-bench-") as tmp:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix="sb.", data_dir=Path(tmp))
        ensure_topics(make_admin(settings), settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
        env.update(RECSYS_BOOTSTRAP_SERVERS=broker.bootstrap_servers, RECSYS_TOPIC_PREFIX="sb.",
                   RECSYS_DATA_DIR=tmp, RECSYS_LOG_LEVEL="WARNING")
        roles = [subprocess.Popen([sys.executable, "-m", "stream", role, "--metrics-port", "0"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
                 for role in ("process", "replay")]
        store = default_store_path(settings)
        try:
            world = World(WorldConfig(seed=3))
            load = list(generate(world, requests, start_ts=T0))
            # Warm-up: one clicked impression long before the load, to know both roles are running;
            # clocks: impressions long after it, so every click window of the load closes.
            last_ts = max(record["ts"] for _, record in load)
            warm = _impression("warm", "warm-user", T0 - 10_000)
            # One per user of 64, so that every partition sees event time move on.
            clocks = [_impression(f"clock-{u}", f"clock-user-{u}", last_ts + 10_000) for u in range(64)]
            with EventProducer(settings, component="bench") as producer:
                producer.send_raw("impressions", json.dumps(warm).encode())
                producer.send_raw("clicks", json.dumps({"event_id": "warm-click", "request_id": "warm",
                                                        "user_id": "warm-user", "item_id": "item-0",
                                                        "ts": T0 - 9_999}).encode())
            if progress:
                progress("waiting for processor and replay service to start")
            if not _wait(lambda: count_stored(store) >= 1, 120):
                raise RuntimeError("the warm-up experience never reached the replay store")
            before = count_stored(store)
            n_shown = sum(len(r["shown"]) for t, r in load if t == "impressions")
            n_purchases = sum(1 for t, _ in load if t == "purchases")
            expected = n_shown + n_purchases
            if progress:
                progress(f"streaming {len(load):,} events (expecting {expected:,} experiences)")
            started = time.perf_counter()
            with EventProducer(settings, component="bench") as producer:
                for logical, record in load:
                    producer.send_raw(logical, json.dumps(record).encode())
                for clock in clocks:
                    producer.send_raw("impressions", json.dumps(clock).encode())
            produced_at = time.perf_counter() - started
            done = _wait(lambda: count_stored(store) - before >= expected, 900)
            elapsed = time.perf_counter() - started
            stored = count_stored(store) - before
        finally:
            stop_processes(*roles)
        clicks = {}
        for msg in read_topic(settings, topic_name(settings, "clicks"), timeout=120):
            record = json.loads(msg.value())
            if "request_id" in record:
                clicks[f"{record['request_id']}:{record['item_id']}:click"] = msg.timestamp()[1]
        delays = [msg.timestamp()[1] - clicks[eid]
                  for msg in read_topic(settings, topic_name(settings, "experiences"), timeout=120)
                  if (eid := json.loads(msg.value())["event_id"]) in clicks]
    delays_s = np.array(delays, dtype=np.float64) / 1000.0
    return result(
        "stream_throughput",
        {"events_per_second": round(len(load) / elapsed, 1), "events": len(load),
         "experiences_stored": stored, "experiences_expected": expected, "complete": bool(done),
         "produce_seconds": round(produced_at, 3), "seconds": round(elapsed, 3),
         "click_to_experience_p50_seconds": round(float(np.percentile(delays_s, 50)), 4) if len(delays_s) else None,
         "click_to_experience_p99_seconds": round(float(np.percentile(delays_s, 99)), 4) if len(delays_s) else None},
        {"requests": requests, "processor": "batch join worker (recsys-stream process)", "replay": "recsys-stream replay",
         "broker": "embedded Tansu", "partitions": settings.partitions},
    )


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--requests", type=int, default=20_000)

    def summary(out):
        m = out["metrics"]
        return (f"{m['events']:,} events in {m['seconds']}s = {m['events_per_second']:,.0f} events/s through the join "
                f"into the replay store ({m['experiences_stored']:,}/{m['experiences_expected']:,} experiences); "
                f"click to experience p50 {m['click_to_experience_p50_seconds']}s, "
                f"p99 {m['click_to_experience_p99_seconds']}s")

    return run_benchmark(__doc__, configure, lambda args, say: measure(args.requests, say), summary, argv)


if __name__ == "__main__":
    sys.exit(main())
