"""Which consumer can feed the reward join at 20k events/s? faust per event, faust take(), or a batch consumer.

    python -m bench.join_consumers [--requests N] [--mode faust-events|faust-take|batch|all] [--json]

Simulated traffic (impressions, clicks, purchases) is written to the embedded
broker, then read back once per mode from the beginning: faust iterating events
(decode + join per event), faust ``stream.take(5000)`` (no processing: the ceiling
of faust's batched path), and a confluent-kafka batch consumer (``consume(5000)``,
decode + join). Events per second are counted from the first event consumed to
the last. Each faust mode runs in its own process, since a faust app owns its loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.machine import result
from bench.runner import run_benchmark

SOURCES = ("impressions", "clicks", "purchases")
METHOD = {"impressions": "impression", "clicks": "click", "purchases": "purchase"}


def _produce(bootstrap: str, prefix: str, requests: int) -> int:
    from sim.traffic import generate
    from sim.world import World, WorldConfig
    from stream.config import Settings
    from stream.kafka.clients import make_admin
    from stream.kafka.producer import EventProducer
    from stream.kafka.topics import ensure_topics

    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=4)
    ensure_topics(make_admin(settings), settings)
    count = 0
    with EventProducer(settings, "bench") as producer:
        for logical, record in generate(World(WorldConfig(seed=1)), requests, start_ts=1_763_900_000.0):
            producer.send_raw(logical, json.dumps(record).encode())
            count += 1
    return count


def _batch(bootstrap: str, prefix: str, total: int) -> dict:
    from stream import schemas
    from stream.config import Settings
    from stream.join.reward_join import RewardJoin
    from stream.kafka.clients import make_consumer

    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    consumer = make_consumer(settings, "bench", f"{prefix}batch", **{"fetch.wait.max.ms": 10})
    names = {f"{prefix}{t}": t for t in SOURCES}
    consumer.subscribe(list(names))
    joins: dict[int, RewardJoin] = {}
    seen = experiences = 0
    started = None
    try:
        while seen < total:
            messages = consumer.consume(5000, 0.5)
            if messages and started is None:
                started = time.perf_counter()
            for msg in messages:
                if msg.error():
                    continue
                logical = names[msg.topic()]
                join = joins.get(msg.partition()) or joins.setdefault(msg.partition(), RewardJoin())
                out = getattr(join, METHOD[logical])(schemas.decode(logical, msg.value()))
                experiences += len(out.experiences)
                seen += 1
    finally:
        consumer.close()
    seconds = time.perf_counter() - started
    return {"events": seen, "seconds": seconds, "events_per_second": seen / seconds, "experiences": experiences}


def _faust(bootstrap: str, prefix: str, total: int, mode: str) -> dict:
    """Runs inside a child process: a minimal faust worker over the three topics."""
    import faust

    from stream import schemas
    from stream.join.reward_join import RewardJoin

    app = faust.App(f"{prefix}bench-{mode}", broker=f"kafka://{bootstrap}", store="memory://",
                    topic_partitions=4, web_enabled=False, consumer_auto_offset_reset="earliest",
                    broker_session_timeout=6.0)
    names = {f"{prefix}{t}": t for t in SOURCES}
    source = app.topic(*names, value_serializer="raw", key_serializer="raw")
    state = {"seen": 0, "experiences": 0, "started": None}
    joins: dict[int, RewardJoin] = {}

    @app.agent(source)
    async def consume(stream):
        if mode == "faust-take":
            async for values in stream.take(5000, within=0.2):
                state["started"] = state["started"] or time.perf_counter()
                state["seen"] += len(values)
        else:
            async for event in stream.events():
                state["started"] = state["started"] or time.perf_counter()
                logical = names[event.message.topic]
                join = joins.get(event.message.partition) or joins.setdefault(event.message.partition, RewardJoin())
                out = getattr(join, METHOD[logical])(schemas.decode(logical, event.value))
                state["experiences"] += len(out.experiences)
                state["seen"] += 1

    @app.timer(0.2)
    async def finish():
        if state["seen"] >= total:
            seconds = time.perf_counter() - state["started"]
            print(json.dumps({"events": state["seen"], "seconds": seconds, "events_per_second": state["seen"] / seconds,
                              "experiences": state["experiences"]}), flush=True)
            os._exit(0)

    sys.argv = ["bench", "worker", "--loglevel", "warn", "--without-web"]
    app.main()
    return {}


def measure(requests: int = 30_000, modes: tuple[str, ...] = ("faust-events", "faust-take", "batch"),
            progress=None) -> dict:
    from stream.kafka.broker import EmbeddedBroker

    metrics: dict[str, float] = {}
    with EmbeddedBroker() as broker:
        prefix = "bench."
        total = _produce(broker.bootstrap_servers, prefix, requests)
        metrics["events"] = total
        for mode in modes:
            if progress:
                progress(mode)
            if mode == "batch":
                out = _batch(broker.bootstrap_servers, prefix, total)
            else:
                done = subprocess.run(
                    [sys.executable, "-m", "bench.join_consumers", "--child", mode,
                     "--bootstrap", broker.bootstrap_servers, "--total", str(total)],
                    capture_output=True, text=True, timeout=900)
                # faust routes the worker's stdout through its logger, so look in both streams.
                found = [line[line.index('{"events"'):].rsplit("}", 1)[0] + "}"
                         for line in (done.stdout + done.stderr).splitlines() if '{"events"' in line]
                if not found:
                    raise RuntimeError(f"faust {mode} run failed:\n{done.stderr[-2000:]}")
                out = json.loads(found[-1])
            metrics[f"{mode}_events_per_second"] = round(out["events_per_second"], 1)
            if mode != "faust-take":
                metrics[f"{mode}_experiences"] = out["experiences"]
    return result("join_consumers", metrics, {"requests": requests, "partitions": 4, "broker": "embedded Tansu",
                                              "modes": list(modes)})


def main(argv: list[str] | None = None) -> int:
    if argv is None and "--child" in sys.argv:   # a faust worker started by measure()
        child = argparse.ArgumentParser()
        child.add_argument("--child")
        child.add_argument("--bootstrap")
        child.add_argument("--total", type=int)
        args = child.parse_args()
        _faust(args.bootstrap, "bench.", args.total, args.child)
        return 0

    def configure(parser):
        parser.add_argument("--requests", type=int, default=30_000)
        parser.add_argument("--mode", default="all", choices=["all", "faust-events", "faust-take", "batch"])

    def run(args, say):
        modes = ("faust-events", "faust-take", "batch") if args.mode == "all" else (args.mode,)
        return measure(args.requests, modes, progress=(lambda mode: say(f"measuring {mode} ...")) if say else None)

    def summary(out):
        m = out["metrics"]
        return f"{m['events']} events: " + ", ".join(
            f"{mode} {m[f'{mode}_events_per_second']:,.0f}/s" for mode in out["params"]["modes"])

    return run_benchmark(__doc__, configure, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
