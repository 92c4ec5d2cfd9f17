"""`recsys-stream demo`: the whole loop, live, on the embedded broker.

It starts (or uses) a broker, creates the topics, publishes the simulated shop's
catalogue, and runs every role as its own process: the reward join, the replay
buffer, the learner and the scorer. Then the simulator's users ask the scorer for
slates over HTTP and click and buy on what they are shown; their clicks and
purchases go to Kafka like any shop's would. Every second of traffic is also
scored for what a uniform random policy and the oracle would have earned on the
same requests (expected values from the simulator's ground truth), so the
learned policy's progress is measured, not guessed.
"""

from __future__ import annotations

import bisect
import contextlib
import http.client
import itertools
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import SecretStr

from sim.world import Drift, World, WorldConfig
from stream import schemas
from stream.config import Settings, child_environment
from stream.demo.prometheus_server import LocalPrometheus
from stream.demo.walkthrough import broker_process_for
from stream.kafka.broker import die_with_parent, free_port
from stream.kafka.clients import LOGGING_LINGER_MS, make_admin
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_decoded, read_topic
from stream.kafka.topics import ensure_topics, topic_name
from stream.ops.allocator import launch_env, library_for
from stream.ops.memory import rss_bytes
from stream.policy.bus import one_per_number, read_versions
from stream.policy.trust import new_key, trust_of

ROLES = ("process", "replay", "learn", "score")
#: The experiment the demo's arms run as (``--arms``): it seeds which arm each simulated user is in.
EXPERIMENT = "demo"
#: The learner's forgetting probe period in the demo (minutes in production; a demo lasts minutes).
PROBE_PERIOD_SECONDS = 15
#: Click-to-live is also reported per this many seconds of traffic (does freshness hold over a long run?).
FRESHNESS_WINDOW_SECONDS = 300.0
#: The Prometheus job of each role, as deploy/prometheus/prometheus.yml names it.
JOBS = {"process": "processor", "replay": "replay", "learn": "learner", "score": "scorer"}
#: The join's click window in the demo (seconds): a slate's no-clicks are emitted this long after it.
DEMO_CLICK_WINDOW = 5.0


@dataclass
class LoopOptions:
    duration: float = 150.0
    requests: int | None = None
    rate: float = 80.0            # requests per second the simulated users make
    candidates: int = 20
    slate_size: int = 5
    seed: int = 7
    plot: Path | None = None
    log_dir: Path | None = None
    #: Drift of one segment's tastes, as a share of the run: (start, end).
    drift: tuple[float, float] = (0.5, 0.8)
    #: The learner's publish cadence (half-precision deltas keep a version a second within the policy traffic
    #: that one every 2 s made in float32).
    publish_seconds: float = 1.0
    #: A full policy snapshot every this many versions (the rest are deltas; the learner also makes one every
    #: 300 s); 1: every version full.
    full_every: int = 400
    #: Start a real Prometheus server on this port scraping every role (None: no server).
    prometheus_port: int | None = None
    #: Called about once a second with (seconds of traffic, roles, settings): tests use it to
    #: tamper with the policy topic or kill a role mid-run.
    on_second: Callable[[float, Roles, Settings], None] | None = None
    #: More command-line options for the scorer (e.g. ``("--max-users", "1000")`` in a soak).
    score_args: tuple[str, ...] = ()
    #: The malloc of each role (``stream/ops/allocator.py``): ``auto`` preloads jemalloc, where it is
    #: installed, into the join, the replay store and the learner; ``jemalloc`` into every role; ``glibc``: none.
    allocator: str = "auto"
    #: An online experiment: agent variants (``learn --variant``), each an arm with half the users and its own
    #: learner; empty: one learner, no experiment.
    arms: tuple[str, ...] = ()


@dataclass
class Window:
    """Per-second tallies of expected reward and CTR: learned, random and oracle on the same requests."""

    t: list[float] = field(default_factory=list)
    learned: list[float] = field(default_factory=list)
    random: list[float] = field(default_factory=list)
    oracle: list[float] = field(default_factory=list)
    ctr_learned: list[float] = field(default_factory=list)
    ctr_random: list[float] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    #: In an experiment: each arm's learned reward per second (NaN in a second without its requests).
    arms: dict[str, list[float]] = field(default_factory=dict)


#: The roles' own deadline after SIGTERM (``RECSYS_STOP_GRACE_SECONDS``); ``Roles.stop`` waits longer.
STOP_GRACE_SECONDS = 10.0


class Roles:
    """The worker processes of the loop, each with its log and /metrics port, stopped together."""

    def __init__(self, settings: Settings, log_dir: Path, publish_seconds: float, full_every: int = 100,
                 score_args: tuple[str, ...] = (), allocator: str = "auto", arms: tuple[str, ...] = ()) -> None:
        # The loop decides the arms itself (``arms``); INFO: the demo reads the roles' logs.
        self.env = child_environment(settings.model_copy(update={"arms": None}), RECSYS_LOG_LEVEL="INFO",
                                     PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                                     # below ``stop``'s wait, so a role stuck on a dead broker ends itself and says why
                                     RECSYS_STOP_GRACE_SECONDS=str(STOP_GRACE_SECONDS))
        self.log_dir = log_dir
        self.publish_seconds = publish_seconds
        self.full_every = full_every
        self.score_args = score_args
        self.allocator, self.jemalloc = allocator, library_for(allocator)   # fails before anything starts
        self.procs: dict[str, subprocess.Popen] = {}
        self.metrics: dict[str, int] = {}
        self.score_port = free_port()
        self.broker_pid: int | None = None      # the embedded broker's, to watch its memory
        #: Learner role -> the arm it trains: "learn" the first arm's, "learn.<arm>" each other's.
        self.arms = {("learn" if i == 0 else f"learn.{arm}"): arm for i, arm in enumerate(arms)}
        self.roles = [role for role in ROLES if role != "learn" or not arms]
        self.roles[2:2] = list(self.arms)

    def start(self) -> None:
        for role in self.roles:
            self.launch(role)

    def launch(self, role: str) -> None:
        """Start (or restart) one role, on the same /metrics port as before."""
        command = role.split(".")[0]
        if role == "score":
            port = self.score_port
            arms = ["--arms", ",".join(f"{arm}=50" for arm in self.arms.values()), "--experiment", EXPERIMENT]
            extra = ["--port", str(port), "--no-kafka-requests", *(arms if self.arms else []), *self.score_args]
        else:
            port = self.metrics.get(role) or free_port()
            extra = {
                "process": ["--click-window", str(DEMO_CLICK_WINDOW), "--grace", "1", "--purchase-window", "30"],
                "replay": [],
                "learn": ["--publish-seconds", str(self.publish_seconds), "--publish-every", "40",
                          "--full-every", str(self.full_every), "--threads", "1", "--probe-period", str(PROBE_PERIOD_SECONDS)],
            }[command] + ["--metrics-port", str(port)]
            if role in self.arms:
                extra += ["--name", self.arms[role], "--variant", self.arms[role]]
        self.metrics[role] = port
        with (self.log_dir / f"{role}.log").open("ab") as log:
            env = launch_env(self.env, command, self.allocator, self.jemalloc)
            self.procs[role] = subprocess.Popen([sys.executable, "-m", "stream", command, *extra], env=env,
                                                stdout=log, stderr=subprocess.STDOUT,
                                                # its own session (Ctrl-C reaches only this process, which stops
                                                # the roles in order), and SIGTERM if this process dies: a
                                                # demo or soak killed outright leaves no role running
                                                preexec_fn=die_with_parent)

    def check(self) -> None:
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{role}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"role {role} exited with {proc.returncode}; last log lines:\n" + "\n".join(tail))

    def stop(self, timeout: float = STOP_GRACE_SECONDS + 5.0) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for role, proc in self.procs.items():
            try:
                codes[role] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[role] = proc.wait()
        return codes


class ScorerClient:
    """Keep-alive HTTP client of the scorer (one connection, reopened on error)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def score(self, body: dict) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.conn.request("POST", "/score", data, {"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                return resp.status, json.loads(resp.read())
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def health_of(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _mb(value: int | None) -> float | None:
    return round(value / 2**20, 1) if value is not None else None


def policy_traffic(learner_metrics: str, versions: list, seconds: float) -> dict[str, Any]:
    """Bytes of policy weights the learner wrote (its counters, every version) per second, and the sizes of
    the versions still on the topic (the last full snapshot and the deltas since)."""
    written = dict(by_label(learner_metrics, "recsys_policy_bytes_published_total", "kind"))
    deltas = [v.header.total_bytes for v in versions if v.header.kind == "delta"]
    fulls = [v.header.total_bytes for v in versions if v.header.kind == "full"]
    return {
        "policy_bytes_per_s": round(sum(written.values()) / max(seconds, 1e-9), 1),
        "bytes_written": {k: int(v) for k, v in written.items()},
        "full_snapshot_bytes": fulls[-1] if fulls else None,
        "delta_bytes_p50": int(np.percentile(deltas, 50)) if deltas else None,
        "delta_bytes_p99": int(np.percentile(deltas, 99)) if deltas else None,
        "deltas_on_topic": len(deltas),
    }


def wait_healthy(port: int, roles: Roles, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        roles.check()
        health = health_of(port)
        if health is not None:
            return health
        time.sleep(0.5)
    raise TimeoutError(f"scorer not healthy within {timeout:.0f}s (see {roles.log_dir}/score.log)")


def wait_assigned(roles: Roles, timeout: float = 120.0) -> None:
    """Until the join and every learner read their input partitions: traffic sent before a group assigns a
    role its partitions waits for it (about 2 s on the embedded broker), and the first clicks measured that,
    not the loop."""
    deadline = time.monotonic() + timeout
    waiting = [role for role in roles.metrics if role.split(".")[0] in ("process", "learn")]
    while waiting and time.monotonic() < deadline:
        roles.check()
        waiting = [role for role in waiting
                   if not any(v > 0 for _, v in labelled_series(scrape(roles.metrics[role]),
                                                                 "recsys_consumer_assigned_partitions"))]
        if waiting:
            time.sleep(0.2)
    if waiting:
        raise TimeoutError(f"{', '.join(waiting)} got no partitions within {timeout:.0f}s (see {roles.log_dir})")


def make_world(options: LoopOptions, horizon: int) -> World:
    start, end = (int(horizon * f) for f in options.drift)
    return World(WorldConfig(seed=options.seed, new_users=200, new_items=20, horizon=horizon,
                             drifts=(Drift(segment=0, start=start, end=end, shift=3),)))


def run_closed_loop(settings: Settings, options: LoopOptions, say: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    settings = settings.model_copy(update={"topic_prefix": settings.topic_prefix or f"demo-{uuid.uuid4().hex[:6]}."})
    if settings.hmac_key is None and not settings.allow_unsigned:
        # Zero set-up, still signed: a key for this run, given to every role it starts.
        settings = settings.model_copy(update={"hmac_key": SecretStr(new_key())})
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recsys-loop-")))
        if settings.data_dir == Settings.model_fields["data_dir"].default:
            settings = settings.model_copy(update={"data_dir": tmp / "data"})
        log_dir = options.log_dir or tmp / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        live, broker_pid = stack.enter_context(broker_process_for(settings))
        say(f"broker {live.bootstrap_servers}; topics prefix {live.topic_prefix!r}; logs in {log_dir}")
        ensure_topics(make_admin(live, "demo"), live)
        expected = int(options.requests or options.duration * options.rate)
        world = make_world(options, expected)
        # The simulated apps batch their clicks and purchases as an app's event SDK does.
        producer = stack.enter_context(EventProducer(live, component="demo", **{"linger.ms": LOGGING_LINGER_MS}))
        now = time.time()
        for i in range(len(world.catalog)):
            producer.send("items", schemas.decode("items", json.dumps(world.catalog.item_record(i, now))))
        producer.flush()
        roles = Roles(live, log_dir, options.publish_seconds, options.full_every, options.score_args,
                      options.allocator, options.arms)
        say(f"catalogue: {len(world.catalog)} items published; starting {', '.join(roles.roles)}"
            + (f"; experiment {EXPERIMENT}: arms {', '.join(options.arms)}, half the users each" if options.arms else ""))
        roles.broker_pid = broker_pid
        roles.start()
        stack.callback(roles.stop)
        health = wait_healthy(roles.score_port, roles)
        wait_assigned(roles)
        pids = {**{role: proc.pid for role, proc in roles.procs.items()}, "broker": broker_pid}
        memory_start = {role: rss_bytes(pid) for role, pid in pids.items()}
        say(f"scorer up at http://127.0.0.1:{roles.score_port} (policy v{health['policy_version']}); "
            + ", ".join(f"{r} /metrics :{p}" for r, p in roles.metrics.items()))
        prometheus = None
        if options.prometheus_port is not None:
            targets: dict[str, list[str]] = {}
            for r, p in roles.metrics.items():
                targets.setdefault(JOBS[r.split(".")[0]], []).append(f"127.0.0.1:{p}")
            prometheus = LocalPrometheus(targets, tmp / "prometheus", options.prometheus_port)
            prometheus.start()
            stack.callback(prometheus.stop)
            say(f"Prometheus at {prometheus.url} scraping {', '.join(JOBS.values())} with the alert rules loaded; "
                f"try {prometheus.url}/graph?g0.expr=recsys_policy_version or {prometheus.url}/alerts")
        report = _drive(live, options, world, roles, producer, say, expected)
        memory_end = {role: rss_bytes(pid) for role, pid in pids.items()}
        report["memory_mb"] = {role: {"start": _mb(memory_start[role]), "end": _mb(memory_end[role])}
                               for role in pids if memory_start[role] is not None}
        if prometheus is not None:
            report["prometheus"] = prometheus_summary(prometheus)
        report["seconds"] = round(time.monotonic() - started, 1)
        scrapes = {role: scrape(port) for role, port in roles.metrics.items()}
        # Every metric family each role exports, as a live scrape shows it (deploy/ checks its queries on it).
        report["metric_families"] = {role: sorted(set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M)))
                                     for role, text in scrapes.items()}
        report["offset_gaps"] = offset_gaps(scrapes)
        # What each role says it runs on (``recsys_allocator_info``), not what it was asked to.
        report["allocators"] = {role: next((name for name, value in by_label(text, "recsys_allocator_info", "allocator")
                                            if value == 1.0), None) for role, text in scrapes.items()}
        learner_metrics = scrapes["learn"]
        report["experience_to_update_seconds"] = histogram_quantiles(learner_metrics,
                                                                     "recsys_learner_fresh_delay_seconds")
        report["event_to_update_seconds"] = histogram_quantiles(learner_metrics,
                                                                "recsys_learner_event_to_update_seconds")
        report["forgetting_by_probe_age"] = dict(by_label(learner_metrics, "recsys_learner_forgetting_ratio", "probe"))
        # Where click -> live goes, stage by stage (the first arm's learner in an experiment).
        report["stage_seconds"] = {
            **{f"learner_{stage}": histogram_quantiles(learner_metrics, "recsys_learner_publish_stage_seconds",
                                                       label=f'stage="{stage}"')
               for stage in ("gate", "publish", "consolidate", "checkpoint")},
            "learner_update": histogram_quantiles(learner_metrics, "recsys_learner_update_seconds"),
            "scorer_publish_to_serve": histogram_quantiles(scrapes["score"], "recsys_scorer_publish_to_serve_seconds"),
            "scorer_swap_build": histogram_quantiles(scrapes["score"], "recsys_scorer_swap_build_seconds"),
        }
        codes = roles.stop()
        report["exit_codes"] = codes
        report["embedded_broker"] = settings.bootstrap_servers is None
        report["logs"] = str(log_dir)
        letters = [schemas.decode("dlq", m.value()) for m in read_topic(live, topic_name(live, "dlq"), "demo")]
        report["dead_letters"] = dict(Counter(letter.reason for letter in letters))
        if options.arms:
            report["experiment"] = judge_arms(live, options.arms)
            live = live.model_copy(update={"policy_name": options.arms[0]})   # the first arm's chain below
        versions = one_per_number(read_versions(live), trust_of(live))   # a forged claimant may share a number
        report["versions_published"] = [v.version for v in versions]
        report["policy_traffic"] = policy_traffic(learner_metrics, versions, report["traffic_seconds"])
    if options.plot is not None:
        plot(report, options.plot)
        report["plot"] = str(options.plot)
    return report


def _drive(settings: Settings, options: LoopOptions, world: World, roles: Roles, producer: EventProducer,
           say: Callable[[str], None], expected: int) -> dict[str, Any]:
    client = ScorerClient(roles.score_port)
    rng = np.random.default_rng(options.seed + 1)
    k = options.slate_size
    win = Window()
    failures = 0
    served_versions: dict[int, float] = {}     # version -> when the demo first saw it served
    freshness: list[float] = []                # per version: served - newest click it was trained on
    published_meta: dict[int, float] = {}
    click_times: list[float] = []
    tally: deque[tuple[float, ...]] = deque(maxlen=2000)                  # (learned, random, oracle, ctr_l, ctr_r) per request
    phase_of = lambda step: ("drift" if world.active_drifts() else ("before" if step < world.config.drifts[0].start  # noqa: E731
                                                                 else "after"))
    phases: dict[str, list[tuple[float, float, float]]] = {"before": [], "drift": [], "after": []}
    events = 0
    t0 = last_print = last_second = time.monotonic()
    traffic_started = time.time()
    second_rows: list[tuple[float, float, float, float, float]] = []
    arm_values: dict[str, list[float]] = {arm: [] for arm in options.arms}     # per request, each arm's
    arm_second: dict[str, list[float]] = {arm: [] for arm in options.arms}
    win.arms = {arm: [] for arm in options.arms}
    n = 0
    while n < expected and (options.requests is not None or time.monotonic() - t0 < options.duration):
        users = world.sample_users(1)
        cands = world.candidates(1, options.candidates)
        u = int(users[0])
        user_id = str(world.users.user_ids[u])
        item_ids = [str(x) for x in world.catalog.item_ids[cands[0]]]
        body = {"user_id": user_id, "candidates": item_ids, "k": k,
                "context": {"features": [round(float(x), 5) for x in world.users.features[u]]}}
        status, answer = client.score(body)
        if status != 200:
            failures += 1
            continue
        index = {item: i for i, item in enumerate(item_ids)}
        slate = np.array([[cands[0][index[s["item_id"]]] for s in answer["slate"]]])
        version = int(answer["policy_version"])
        # Freshness follows one chain of versions: in an experiment, the first arm's.
        if (not options.arms or answer.get("policy_name") == options.arms[0]) and version not in served_versions:
            served_versions[version] = time.time()
            if version > 0:
                health = health_of(roles.score_port)      # the live version's metrics, without reading the topic
                if health:
                    published_meta[health["policy_version"]] = health["policy_metrics"].get("trained_through_ts", 0.0)
                if published_meta.get(version):
                    freshness.append(served_versions[version] - published_meta[version])
        random_slate = cands[:, rng.permutation(options.candidates)[:k]]
        oracle_slate = world.oracle_slates(users, cands, k)
        learned_value = float(world.expected_reward(users, slate)[0])
        random_value = float(world.expected_reward(users, random_slate)[0])
        oracle_value = float(world.expected_reward(users, oracle_slate)[0])
        ctr_l = float(world.click_probability(users, slate).sum() / k)
        ctr_r = float(world.click_probability(users, random_slate).sum() / k)
        phase = phase_of(world.step)
        feedback = world.feedback(users, slate)       # advances the world's clock by one request
        now = time.time()
        for p in np.flatnonzero(feedback.clicks[0]):
            item = answer["slate"][p]["item_id"]
            producer.send("clicks", schemas.Click(f"clk-{answer['request_id']}-{p}", user_id, item, now,
                                                  answer["request_id"]))
            click_times.append(now)
            events += 1
            if feedback.purchases[0, p]:
                producer.send("purchases", schemas.Purchase(
                    f"pur-{answer['request_id']}-{p}", user_id, item, round(float(feedback.values[0, p]), 2), now,
                    answer["request_id"]))
                events += 1
        events += 1   # the impression the scorer logged
        n += 1
        tally.append((learned_value, random_value, oracle_value, ctr_l, ctr_r))
        phases[phase].append((learned_value, random_value, oracle_value))
        second_rows.append((learned_value, random_value, oracle_value, ctr_l, ctr_r))
        if answer.get("arm") in arm_second:
            arm_second[answer["arm"]].append(learned_value)
            arm_values[answer["arm"]].append(learned_value)
        mono = time.monotonic()
        if mono - last_second >= 1.0:
            rows = np.array(second_rows)
            win.t.append(mono - t0)
            for name, col in zip(("learned", "random", "oracle", "ctr_learned", "ctr_random"), rows.T):
                getattr(win, name).append(float(col.mean()))
            win.version.append(version)
            for arm, values in arm_second.items():
                win.arms[arm].append(float(np.mean(values)) if values else float("nan"))
                values.clear()
            second_rows.clear()
            last_second = mono
            if options.on_second is not None:
                options.on_second(mono - t0, roles, settings)
        if mono - last_print >= 5.0:
            roles.check()
            recent = np.array(tally)
            by_arm = " / ".join(f"{arm} {np.mean(values[-1000:]):.3f}" for arm, values in arm_values.items() if values)
            say(f"{mono - t0:6.1f}s  {n:6d} requests  {events / (mono - t0):6.0f} events/s  policy v{version:<3d} "
                f"CTR learned {recent[:, 3].mean():.3f} vs random {recent[:, 4].mean():.3f}  "
                f"reward {by_arm or f'{recent[:, 0].mean():.3f}'} / random {recent[:, 1].mean():.3f} / "
                f"oracle {recent[:, 2].mean():.3f}" + (f"  freshness {freshness[-1]:.1f}s" if freshness else ""))
            last_print = mono
        # Pace the users: `rate` requests per second on average.
        ahead = n / options.rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    elapsed = time.monotonic() - t0
    # What the scorer said of each version while it was live (older ones are gone from the topic by now).
    lags = click_lags(click_times, served_versions, published_meta)
    per_click = [lag for lag in lags if lag is not None]
    not_live = len(lags) - len(per_click)
    last = np.array(tally) if tally else np.zeros((1, 5))
    summary_phases = {
        name: {"requests": len(rows), "learned": _mean(rows, 0), "random": _mean(rows, 1), "oracle": _mean(rows, 2)}
        for name, rows in phases.items()}
    return {
        "requests": n, "failed_requests": failures, "events": events, "traffic_seconds": round(elapsed, 1),
        "events_per_second": round(events / max(elapsed, 1e-9), 1),
        "versions_served": sorted(v for v in served_versions if v > 0),
        "last_window": {"requests": len(last), "reward_learned": float(last[:, 0].mean()),
                        "reward_random": float(last[:, 1].mean()), "reward_oracle": float(last[:, 2].mean()),
                        "ctr_learned": float(last[:, 3].mean()), "ctr_random": float(last[:, 4].mean())},
        "phases": summary_phases,
        "freshness_seconds": {"samples": len(freshness),
                              "p50": float(np.percentile(freshness, 50)) if freshness else None,
                              "p99": float(np.percentile(freshness, 99)) if freshness else None},
        "click_to_live_seconds": {"clicks": len(per_click), "not_live_at_end": not_live,
                                  "p50": float(np.percentile(per_click, 50)) if per_click else None,
                                  "p99": float(np.percentile(per_click, 99)) if per_click else None,
                                  "by_window": click_freshness_by_window(click_times, lags, traffic_started,
                                                                         FRESHNESS_WINDOW_SECONDS)},
        "drift_seconds": _drift_seconds(world, options),
        "series": {"t": win.t, "learned": win.learned, "random": win.random, "oracle": win.oracle,
                   "ctr_learned": win.ctr_learned, "ctr_random": win.ctr_random, "version": win.version,
                   "arms": win.arms},
        # Each arm's expected reward per slate (the simulator's truth, not the clicks it drew), all requests and
        # the last half.
        "arm_expected_reward": {arm: {"requests": len(values), "all": _mean_of(values),
                                      "second_half": _mean_of(values[len(values) // 2:])}
                                for arm, values in arm_values.items()},
    }


def judge_arms(settings: Settings, arms: tuple[str, ...]) -> dict[str, Any]:
    """What ``evaluate --arms`` says of the run's arms, from the experiences on the topic."""
    from stream.experiment.report import judge

    experiences, _invalid = read_decoded(settings, "experiences", "demo")
    return judge(experiences, list(arms), settle=DEMO_CLICK_WINDOW).to_dict()


def prometheus_summary(prometheus: LocalPrometheus) -> dict[str, Any]:
    """What the demo's Prometheus saw: targets up, the scorer's p99 and the live versions, by query."""
    def scalar(expr: str) -> float | None:
        result = prometheus.query(expr)
        return float(result[0]["value"][1]) if result else None

    return {
        "url": prometheus.url,
        "targets_up": sorted(r["metric"]["job"] for r in prometheus.query("up == 1")),
        "scorer_http_p99_seconds": scalar('histogram_quantile(0.99, sum by (le) '
                                          '(rate(recsys_scorer_latency_seconds_bucket{transport="http"}[1m])))'),
        "policy_version": {r["metric"]["job"]: int(float(r["value"][1]))
                           for r in prometheus.query("max by (job) (recsys_policy_version)")},
        "alerts_firing": sorted(r["metric"]["alertname"] for r in prometheus.query('ALERTS{alertstate="firing"}')),
    }


def offset_gaps(scrapes: dict[str, str]) -> dict[str, dict[str, float]]:
    """Holes in partitions' offsets each role's consumers met, by outcome (stream/kafka/gaps.py): the embedded
    broker's race, filled by reading again, or stepped over."""
    found: dict[str, dict[str, float]] = {}
    for role, text in scrapes.items():
        for outcome, value in by_label(text, "recsys_kafka_offset_gaps_total", "outcome"):
            totals = found.setdefault(role, {})
            totals[outcome] = totals.get(outcome, 0.0) + value
    return found


def labelled_series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, sample value) of every labelled series of metric ``name`` in a /metrics text."""
    return [(dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(value)) for labels, value in
            re.findall(rf'^{name}\{{([^}}]*)\}} (\S+)$', text, flags=re.M)]


def by_label(text: str, name: str, label: str) -> list[tuple[str, float]]:
    """(value of ``label``, sample value) of every series of metric ``name`` that has ``label``."""
    return [(labels[label], value) for labels, value in labelled_series(text, name) if label in labels]


def scrape(port: int) -> str:
    """A role's /metrics text ('' when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def histogram_quantiles(text: str, name: str, quantiles: tuple[float, ...] = (0.5, 0.99),
                        label: str = "") -> dict[str, float | None]:
    """Quantiles of a Prometheus histogram from its cumulative buckets (the bucket's upper bound, as
    ``histogram_quantile`` would bound it), and its count; ``label`` (``stage="gate"``) picks one series."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{") and label in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, float | None] = {"count": total}
    for q in quantiles:
        out[f"p{round(q * 100):d}_at_most"] = next((le for le, c in buckets if c >= q * total), None) if total else None
    return out


def click_lags(click_times: list[float], served_at: dict[int, float], trained_through: dict[int, float]
               ) -> list[float | None]:
    """Per click, in order: from its event time to the first version serving that was trained on data
    that new (None: no version served was).

    A version counts as trained on a click when its newest trained click is at least as new
    (the learner reads each partition in order, so this is exact per partition and close
    across them); clicks held out for validation are counted like the rest.
    """
    versions = sorted(v for v in served_at if v > 0 and trained_through.get(v))
    # The first version (by number) trained on a click is the first whose running maximum of
    # trained_through reaches it: a binary search, not a scan (an hour's run has 10^5 clicks, 10^3 versions).
    reach = list(itertools.accumulate((trained_through[v] for v in versions), max))
    lags: list[float | None] = []
    for ts in click_times:
        i = bisect.bisect_left(reach, ts)
        lags.append(max(0.0, served_at[versions[i]] - ts) if i < len(reach) else None)
    return lags


def click_freshness_by_window(click_times: list[float], lags: list[float | None], start: float,
                              window: float) -> list[dict[str, Any]]:
    """Click-to-live of the clicks made in each ``window`` seconds from ``start`` (wall time), from
    ``click_lags``: whether freshness holds over a long run, not only on average."""
    by_window: dict[int, list[float | None]] = {}
    for ts, lag in zip(click_times, lags):
        by_window.setdefault(int((ts - start) // window), []).append(lag)
    rows = []
    for index, in_window in sorted(by_window.items()):
        live = [lag for lag in in_window if lag is not None]
        rows.append({"from_s": index * window, "clicks": len(in_window), "not_live_at_end": len(in_window) - len(live),
                     "p50": round(float(np.percentile(live, 50)), 2) if live else None,
                     "p99": round(float(np.percentile(live, 99)), 2) if live else None})
    return rows


def _mean_of(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _mean(rows: list[tuple[float, float, float]], col: int) -> float | None:
    return round(float(np.mean([r[col] for r in rows])), 4) if rows else None


def _drift_seconds(world: World, options: LoopOptions) -> list[float]:
    """When (seconds into the traffic) the drift started and ended, assuming the paced rate."""
    drift = world.config.drifts[0]
    return [round(drift.start / options.rate, 1), round(drift.end / options.rate, 1)]


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["series"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(s["t"], _smooth(s["oracle"]), label="oracle", color="tab:green")
    if s.get("arms"):
        for (arm, values), color in zip(s["arms"].items(), ("tab:blue", "tab:red", "tab:purple", "tab:brown")):
            ax.plot(s["t"], _smooth(values), label=f"arm {arm} (served)", color=color)
    else:
        ax.plot(s["t"], _smooth(s["learned"]), label="learned (served)", color="tab:blue")
    ax.plot(s["t"], _smooth(s["random"]), label="uniform random", color="tab:gray")
    start, end = report["drift_seconds"]
    ax.axvspan(start, end, color="tab:orange", alpha=0.15, label="segment 0 drifted")
    versions = s["version"]
    for i in range(1, len(versions)):
        if versions[i] != versions[i - 1]:
            ax.axvline(s["t"][i], color="tab:blue", alpha=0.15, lw=0.8)
    ax.set_xlabel("seconds of traffic")
    ax.set_ylabel("expected reward per slate (10 s mean)")
    ax.set_title("recsys-stream demo: reward over time (thin lines: new policy versions)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values: list[float], width: int = 10) -> list[float]:
    """Running mean over ``width`` seconds; seconds without a value (NaN) are skipped."""
    out: list[float] = []
    acc: deque[float] = deque(maxlen=width)
    for v in values:
        acc.append(v)
        present = [x for x in acc if x == x]
        out.append(sum(present) / len(present) if present else float("nan"))
    return out
