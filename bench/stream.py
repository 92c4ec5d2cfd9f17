"""The stream hot path in one run: the join alone, end to end into the replay store, and paced delays.

    recsys-stream bench stream [--requests N] [--paced-seconds S] [--json OUT]
    python -m bench.stream [--requests N] [--paced-seconds S] [--json]

Three phases on one embedded broker, each on its own topics with freshly started
roles (`recsys-stream process`, `recsys-stream replay`, the production commands):

1. **join**: simulated traffic is written first (a backlog), then `process` starts
   alone. The rate is input events committed per second, from its first commit
   to its last, so start-up and the group join are left out; a commit comes only
   after the batch's experiences and join state are acknowledged.
2. **end to end**: `process` and `replay` run; the same traffic is produced as
   fast as the producer goes, and the clock stops when the replay store holds
   every expected experience (each shown item once, each purchase once).
3. **paced**: traffic at half the end-to-end rate of phase 2. Click -> experience
   is the Kafka CreateTime of each click to that of its click experience; click ->
   stored is the click's CreateTime to the moment a poller (every 20 ms) first
   sees the experience in the replay store.

Everything runs on this machine: the producer, the broker and both roles share
its cores, as they would on a small production box.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.machine import result
from bench.runner import run_benchmark, stop_processes

T0 = 1_763_900_000.0
SOURCES = ("impressions", "clicks", "purchases")
Say = Callable[[str], None]


def _impression(request: str, user: str, ts: float) -> bytes:
    return json.dumps({"event_id": f"imp-{request}", "request_id": request, "user_id": user, "ts": ts,
                       "policy_version": 0,
                       "shown": [{"item_id": "item-0", "position": 0, "propensity": 1.0}]}).encode()


def _click(request: str, user: str, ts: float) -> bytes:
    return json.dumps({"event_id": f"click-{request}", "request_id": request, "user_id": user, "item_id": "item-0",
                       "ts": ts}).encode()


def _purchase(request: str, user: str, ts: float) -> bytes:
    return json.dumps({"event_id": f"buy-{request}", "request_id": request, "user_id": user, "item_id": "item-0",
                       "value": 1.0, "ts": ts}).encode()


def _wait(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


class Traffic:
    """Simulated events as the bytes a client would send, with the experiences they must yield."""

    def __init__(self, requests: int, seed: int = 3, start: float = T0) -> None:
        from sim.traffic import generate
        from sim.world import World, WorldConfig

        load = list(generate(World(WorldConfig(seed=seed)), requests, start_ts=start))
        self.events = [(logical, json.dumps(record).encode()) for logical, record in load]
        last = max(record["ts"] for _, record in load)
        # Traffic long after the last event on all three inputs (a clicked and bought impression for
        # each of 64 users, so every partition has some): event time moves past every window, and
        # each no_click comes out, as live traffic would make it. Without them the join waits for
        # its inputs to be idle before it lets event time run on, and that wait is what was timed.
        self.events += [(logical, make(f"clock-{u}", f"clock-user-{u}", last + 10_000 + i))
                        for u in range(64)
                        for i, (logical, make) in enumerate((("impressions", _impression), ("clicks", _click),
                                                             ("purchases", _purchase)))]
        # Every shown item once (a click or a no_click) and every purchase once; the clock requests
        # yield a click and a purchase each.
        self.expected = (sum(len(r["shown"]) for t, r in load if t == "impressions")
                         + sum(1 for t, _ in load if t == "purchases") + 2 * 64)


class Stage:
    """One phase's topics, data folder and roles on the shared broker."""

    def __init__(self, broker, prefix: str, root: Path) -> None:
        from stream.config import Settings
        from stream.kafka.clients import make_admin
        from stream.kafka.topics import ensure_topics
        from stream.replay.service import default_store_path

        self.data = root / prefix.rstrip(".")
        self.settings = Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix, data_dir=self.data)
        ensure_topics(make_admin(self.settings), self.settings)
        self.store = default_store_path(self.settings)
        self.roles: list[subprocess.Popen] = []

    def start(self, *roles: str) -> None:
        from stream.config import child_environment
        from stream.kafka.broker import die_with_parent

        env = child_environment(self.settings, RECSYS_LOG_LEVEL="WARNING")
        self.roles += [subprocess.Popen([sys.executable, "-m", "stream", role, "--metrics-port", "0"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
                       for role in roles]

    def cpu(self, broker) -> dict[str, float | None]:
        """CPU seconds used so far by each role, the broker and this benchmark's own process (the producer)."""
        from stream.ops.memory import cpu_seconds

        used = {role.args[3]: cpu_seconds(role.pid) for role in self.roles}
        used.update(broker=cpu_seconds(broker.pid), producer=cpu_seconds(os.getpid()))
        return used

    def stop(self) -> None:
        stop_processes(*self.roles)
        for role in self.roles:
            if role.returncode not in (0, -15):
                raise RuntimeError(f"{role.args[3]} exited with {role.returncode}")
        self.roles = []

    def producer(self):
        from stream.kafka.producer import EventProducer

        return EventProducer(self.settings, component="bench")

    def stored(self) -> int:
        from stream.replay.store import count_stored

        return count_stored(self.store)

    def warm_up(self, timeout: float = 120.0) -> int:
        """One clicked impression long before the load: returns once it is stored (both roles are up)."""
        with self.producer() as producer:
            producer.send_raw("impressions", _impression("warm", "warm-user", T0 - 10_000))
            producer.send_raw("clicks", json.dumps({"event_id": "warm-click", "request_id": "warm", "user_id": "warm-user",
                                                    "item_id": "item-0", "ts": T0 - 9_999}).encode())
        if not _wait(lambda: self.stored() >= 1, timeout, 0.1):
            raise RuntimeError(f"the warm-up experience never reached the replay store ({self.store})")
        return self.stored()


def _produce_all(stage: Stage, traffic: Traffic) -> None:
    with stage.producer() as producer:
        for logical, raw in traffic.events:
            producer.send_raw(logical, raw)


def join_alone(stage: Stage, traffic: Traffic, say: Say) -> dict:
    """Phase 1: the backlog first, then `process` alone; committed input events per second."""
    from confluent_kafka import TopicPartition

    from stream.kafka.clients import make_consumer
    from stream.kafka.snapshot import read_topic
    from stream.kafka.topics import topic_name

    say(f"join: writing a backlog of {len(traffic.events):,} events")
    _produce_all(stage, traffic)
    # Offsets count messages (no transactions, no compaction on the inputs): all read is this many.
    total = len(traffic.events)
    watcher = make_consumer(stage.settings, "bench", f"{stage.settings.topic_prefix}rewards")   # never subscribes
    partitions = [TopicPartition(topic_name(stage.settings, s), p) for s in SOURCES
                  for p in range(stage.settings.partitions)]

    def committed() -> int:
        return sum(max(tp.offset, 0) for tp in watcher.committed(partitions, timeout=10))

    say("join: starting `process` on the backlog")
    stage.start("process")
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 900
        done = 0
        while time.monotonic() < deadline:
            done = committed()
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= total:
                break
            time.sleep(0.05)
        finished = time.perf_counter()
    finally:
        watcher.close()
        stage.stop()
    if first is None or done < total:
        raise RuntimeError(f"the join committed {done:,} of {total:,} input events within 900 s")
    seconds = finished - first[0]
    counted = total - first[1]
    produced = sum(1 for _ in read_topic(stage.settings, topic_name(stage.settings, "experiences"), timeout=120))
    if produced != traffic.expected:
        raise RuntimeError(f"the join produced {produced:,} experiences; {traffic.expected:,} were expected")
    # None when the first commit already covered everything (a backlog of one batch cannot be timed).
    return {"join_events_per_s": round(counted / seconds, 1) if counted and seconds > 0 else None,
            "join_events": total, "join_events_timed": counted, "join_seconds": round(seconds, 3),
            "join_experiences": produced}


def end_to_end(stage: Stage, traffic: Traffic, say: Say, broker) -> dict:
    """Phase 2: producer -> process -> replay as fast as they go, until every experience is stored."""
    stage.start("process", "replay")
    try:
        say("end to end: waiting for `process` and `replay` to start")
        before = stage.warm_up()
        say(f"end to end: streaming {len(traffic.events):,} events (expecting {traffic.expected:,} experiences)")
        cpu_before = stage.cpu(broker)
        started = time.perf_counter()
        _produce_all(stage, traffic)
        produced = time.perf_counter() - started
        complete = _wait(lambda: stage.stored() - before >= traffic.expected, 900)
        seconds = time.perf_counter() - started
        cpu_after = stage.cpu(broker)
        stored = stage.stored() - before
    finally:
        stage.stop()
    if not complete:
        raise RuntimeError(f"the replay store holds {stored:,} of {traffic.expected:,} experiences after 900 s")
    return {"end_to_end_events_per_s": round(len(traffic.events) / seconds, 1),
            "experiences_per_s": round(stored / seconds, 1), "end_to_end_events": len(traffic.events),
            "experiences_stored": stored, "experiences_expected": traffic.expected,
            "end_to_end_seconds": round(seconds, 3), "end_to_end_produce_seconds": round(produced, 3),
            # Where the machine's cores went: CPU microseconds per input event, by process.
            "end_to_end_cpu_us_per_event": {
                name: round((cpu_after[name] - used) / len(traffic.events) * 1e6, 1)
                for name, used in cpu_before.items() if used is not None and cpu_after.get(name) is not None}}


class StorePoller(threading.Thread):
    """When each click experience first appears in the replay store (polled every ``every`` seconds)."""

    def __init__(self, path: Path, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.path, self.every = path, every
        self.seen: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        import sqlite3

        last = 0
        db = None
        while not self.halt.is_set():
            if db is None and self.path.exists():
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            if db is not None:
                try:
                    rows = db.execute("SELECT seq, event_id FROM experiences WHERE seq > ? ORDER BY seq",
                                      (last,)).fetchall()
                except sqlite3.OperationalError:   # tables not created yet
                    rows = []
                now = time.time()
                for _seq, event_id in rows:
                    if event_id.endswith(":click"):
                        self.seen.setdefault(event_id, now)
                if rows:
                    last = rows[-1][0]
            time.sleep(self.every)
        if db is not None:
            db.close()


def paced(stage: Stage, rate: float, seconds: float, say: Say) -> dict:
    """Phase 3: traffic at ``rate`` events/s; delays of click experiences to Kafka and into the store."""
    from stream.kafka.snapshot import read_topic
    from stream.kafka.topics import topic_name

    # About 1.5 events per simulated request; another seed than phases 1 and 2.
    events = Traffic(max(200, int(rate * seconds / 1.5)), seed=5).events
    poller = StorePoller(stage.store)
    stage.start("process", "replay")
    try:
        say("paced: waiting for `process` and `replay` to start")
        stage.warm_up()
        poller.start()
        say(f"paced: {len(events):,} events at {rate:,.0f} events/s")
        with stage.producer() as producer:
            started = time.perf_counter()
            sent = 0
            while sent < len(events):
                due = min(len(events), int(rate * (time.perf_counter() - started)) + 1)
                for logical, raw in events[sent:due]:
                    producer.send_raw(logical, raw)
                sent = due
                time.sleep(0.005)
            offered = len(events) / (time.perf_counter() - started)
        clicks_sent = sum(1 for logical, _ in events if logical == "clicks")
        _wait(lambda: len(poller.seen) >= clicks_sent, 60, 0.1)
        time.sleep(0.5)
    finally:
        poller.halt.set()
        stage.stop()
    clicks: dict[str, int] = {}
    for msg in read_topic(stage.settings, topic_name(stage.settings, "clicks"), timeout=120):
        record = json.loads(msg.value())
        if record.get("request_id"):
            clicks[f"{record['request_id']}:{record['item_id']}:click"] = msg.timestamp()[1]
    to_experience = [msg.timestamp()[1] - clicks[eid]
                     for msg in read_topic(stage.settings, topic_name(stage.settings, "experiences"), timeout=120)
                     if (eid := json.loads(msg.value())["event_id"]) in clicks]
    to_stored = [poller.seen[eid] * 1000.0 - ms for eid, ms in clicks.items() if eid in poller.seen]

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(np.asarray(values) / 1000.0, q)), 4) if values else None

    return {"paced_events_per_s": round(offered, 1), "paced_events": len(events),
            "paced_click_experiences": len(to_experience), "paced_clicks_stored": len(to_stored),
            "paced_click_to_experience_p50_s": pct(to_experience, 50),
            "paced_click_to_experience_p99_s": pct(to_experience, 99),
            "paced_click_to_stored_p50_s": pct(to_stored, 50),
            "paced_click_to_stored_p99_s": pct(to_stored, 99)}


def measure(requests: int = 20_000, paced_seconds: float = 20.0, progress: Say | None = None) -> dict:
    from stream.kafka.broker import EmbeddedBroker

    say = progress or (lambda _line: None)
    say(f"generating {requests:,} simulated requests")
    traffic = Traffic(requests)
    metrics: dict = {}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="recsys-stream-bench-") as tmp:
        root = Path(tmp)
        metrics.update(join_alone(Stage(broker, "sj.", root), traffic, say))
        say(f"join: {metrics['join_events_per_s'] or 'n/a'} events/s")
        metrics.update(end_to_end(Stage(broker, "se.", root), traffic, say, broker))
        say(f"end to end: {metrics['end_to_end_events_per_s']:,.0f} events/s")
        metrics.update(paced(Stage(broker, "sp.", root), metrics["end_to_end_events_per_s"] / 2, paced_seconds, say))
        partitions = Stage(broker, "sj.", root).settings.partitions
    return result("stream", metrics, {
        "requests": requests, "paced_seconds": paced_seconds, "partitions": partitions, "broker": "embedded Tansu",
        "processor": "recsys-stream process (batch join worker)", "replay": "recsys-stream replay",
        "store_poll_seconds": 0.02})


def summary(out: dict) -> str:
    m = out["metrics"]
    join = f"{m['join_events_per_s']:,.0f}" if m["join_events_per_s"] else "n/a (one batch)"
    return (f"join alone {join} events/s; end to end {m['end_to_end_events_per_s']:,.0f} "
            f"events/s ({m['experiences_per_s']:,.0f} experiences/s stored, {m['experiences_stored']:,}/"
            f"{m['experiences_expected']:,}); paced at {m['paced_events_per_s']:,.0f}/s: click -> experience "
            f"p50 {m['paced_click_to_experience_p50_s']} s, p99 {m['paced_click_to_experience_p99_s']} s; "
            f"click -> stored p50 {m['paced_click_to_stored_p50_s']} s, p99 {m['paced_click_to_stored_p99_s']} s")


def main(argv: list[str] | None = None) -> int:
    def configure(parser):
        parser.add_argument("--requests", type=int, default=20_000)
        parser.add_argument("--paced-seconds", type=float, default=20.0)

    return run_benchmark(__doc__, configure, lambda args, say: measure(args.requests, args.paced_seconds, say),
                         summary, argv)


if __name__ == "__main__":
    sys.exit(main())
