"""The reward join across crashes and rebalances, over the wire: every reward exactly once.

20k scripted events are paced into the broker while the workers run. One test
SIGKILLs the join worker and the replay service mid-stream and restarts them; the
other runs two join workers in one group, kills one mid-stream and lets the group
rebalance. Both end with exactly the experiences the script implies: no reward
lost, none paid twice, no click also reported as a no_click, and no spurious dead
letter.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from stream import schemas
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from stream.replay.service import default_store_path
from stream.replay.store import count_stored
from tests import waiting
from tests.conftest import cli_command, stop_processes

T0 = 1_763_900_000.0
WINDOWS = ("--click-window", "5", "--purchase-window", "20", "--grace", "2")


def script(impressions: int = 9_300, seed: int = 5) -> tuple[list[tuple[str, object]], dict[str, float]]:
    """Events in (roughly) event-time order, and the experiences they must yield: id -> reward."""
    rng = random.Random(seed)
    events: list[tuple[float, str, object]] = []
    expected: dict[str, float] = {}
    slates = [(T0 + r * 0.01, f"user-{rng.randrange(400)}", rng.sample(range(60), 3)) for r in range(impressions)]
    shown_at: dict[tuple[str, int], list[float]] = {}
    for ts, user, items in slates:
        for i in items:
            shown_at.setdefault((user, i), []).append(ts)
    for r, (ts, user, items) in enumerate(slates):
        shown = [schemas.ShownItem(f"item-{i}", p, 1 / (3 - p)) for p, i in enumerate(items)]
        events.append((ts, "impressions", schemas.Impression(f"imp-{r}", f"req-{r}", user, ts, shown, 3)))
        for p, i in enumerate(items):
            item = f"item-{i}"
            if rng.random() < 0.3:
                cts = ts + rng.uniform(0.05, 3.0)
                # Without request_id only where user and item single out this impression.
                unambiguous = sum(cts - 7.0 <= t <= cts for t in shown_at[(user, i)]) == 1
                request = None if unambiguous and rng.random() < 0.15 else f"req-{r}"
                click = schemas.Click(f"clk-{r}-{p}", user, item, cts, request)
                events.append((cts, "clicks", click))
                if rng.random() < 0.05:
                    events.append((cts + 0.2, "clicks", click))          # an exact duplicate
                expected[f"req-{r}:{item}:click"] = 1.0
                if rng.random() < 0.25:
                    pts = cts + rng.uniform(0.5, 10.0)
                    events.append((pts, "purchases", schemas.Purchase(f"pur-{r}-{p}", user, item, 20.0, pts,
                                                                      f"req-{r}")))
                    expected[f"req-{r}:{item}:purchase"] = 2.0
            else:
                expected[f"req-{r}:{item}:no_click"] = 0.0
    events.sort(key=lambda e: e[0])
    return [(topic, event) for _, topic, event in events], expected


class Pacer(threading.Thread):
    """Sends the script in slices, so the workers are killed while traffic still flows."""

    def __init__(self, settings, events, seconds: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.events, self.seconds = settings, events, seconds
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = EventProducer(self.settings, component="test")
            slices = 40
            size = -(-len(self.events) // slices)
            for start in range(0, len(self.events), size):
                for logical, event in self.events[start:start + size]:
                    producer.send(logical, event)
                producer.flush()
                self.sent = min(start + size, len(self.events))
                time.sleep(self.seconds / slices)
            producer.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def start(cli_env, role: str, log: Path, *extra: str) -> subprocess.Popen:
    env = dict(cli_env, RECSYS_LOG_LEVEL="INFO")
    args = (role, *WINDOWS, *extra) if role == "process" else (role,)
    return subprocess.Popen(cli_command(*args, "--metrics-port", "0"), env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("a"))


def wait_for(condition, timeout: float, what: str, logs: list[Path]):
    return waiting.wait_for(condition, timeout, what, logs=logs)


def wait_until_settled(settings, replay: bool) -> None:
    """Nothing more can arrive once the join (and the replay service) committed past every input record."""
    for logical in ("impressions", "clicks", "purchases"):
        waiting.wait_until_consumed(settings, f"{settings.topic_prefix}rewards", topic_name(settings, logical), 60,
                                    f"the join to commit past every {logical} record")
    if replay:
        waiting.wait_until_consumed(settings, f"{settings.topic_prefix}replay", topic_name(settings, "experiences"),
                                    60, "the replay service to commit past every experience")


stop = stop_processes


def stored(path: Path) -> dict[str, float]:
    with sqlite3.connect(path) as db:
        rows = [schemas.decode("experiences", r[0]) for r in db.execute("SELECT payload FROM experiences")]
    ids = [e.event_id for e in rows]
    assert len(ids) == len(set(ids))
    return {e.event_id: e.reward for e in rows}


def on_topic(settings) -> tuple[dict[str, float], int]:
    """Distinct experiences on the topic (id -> reward) and how many records repeat one."""
    records = [schemas.decode("experiences", m.value())
               for m in read_topic(settings, topic_name(settings, "experiences"))]
    distinct = {e.event_id: e.reward for e in records}
    return distinct, len(records) - len(distinct)


def assert_exact(distinct: dict[str, float], expected: dict[str, float]) -> None:
    missing = sorted(set(expected) - set(distinct))[:5]
    extra = sorted(set(distinct) - set(expected))[:5]
    assert not missing and not extra, f"missing {missing}, unexpected {extra}"
    assert distinct == expected


def assert_no_dead_letters(settings) -> None:
    letters = [schemas.decode("dlq", m.value()) for m in read_topic(settings, topic_name(settings, "dlq"))]
    assert not letters, (len(letters), [(d.reason, d.component, d.error, d.original[:120]) for d in letters[:3]])


def test_kill_9_join_worker_and_replay_mid_stream_then_restart(settings, topics, cli_env, tmp_path):
    events, expected = script()
    assert len(events) >= 20_000
    logs = [tmp_path / "process.log", tmp_path / "replay.log"]
    path = default_store_path(settings)
    pacer = Pacer(settings, events, seconds=8.0)
    processor, replay = start(cli_env, "process", logs[0]), start(cli_env, "replay", logs[1])
    try:
        pacer.start()
        wait_for(lambda: count_stored(path) >= 4000 and pacer.sent < len(events), 90,
                 "the first experiences to be stored while traffic still flows", logs)
        os.kill(processor.pid, signal.SIGKILL)
        os.kill(replay.pid, signal.SIGKILL)
        processor.wait(10)
        replay.wait(10)
        killed_at = pacer.sent
        processor, replay = start(cli_env, "process", logs[0]), start(cli_env, "replay", logs[1])
        pacer.join(60)
        assert pacer.error is None and pacer.sent == len(events)
        wait_for(lambda: count_stored(path) >= len(expected), 120, "every expected experience to be stored", logs)
        wait_until_settled(settings, replay=True)   # a late duplicate or a contradicting no_click lands before
    finally:
        stop(processor, replay)
    assert killed_at < len(events)
    assert "restored" in logs[0].read_text()
    assert_exact(stored(path), expected)
    distinct, _repeats = on_topic(settings)
    assert_exact(distinct, expected)
    assert_no_dead_letters(settings)


def test_two_workers_split_the_partitions_and_survive_one_being_killed(settings, topics, cli_env, tmp_path):
    events, expected = script(seed=9)
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    pacer = Pacer(settings, events, seconds=10.0)
    one = start(cli_env, "process", logs[0])
    two = start(cli_env, "process", logs[1])
    try:
        # Both members own a partition before traffic starts.
        wait_for(lambda: all("partition" in p.read_text() for p in logs), 60, "both workers to be assigned", logs)
        pacer.start()
        wait_for(lambda: pacer.sent >= len(events) // 3, 60, "a third of the traffic", logs)
        os.kill(two.pid, signal.SIGKILL)
        two.wait(10)
        pacer.join(60)
        assert pacer.error is None and pacer.sent == len(events)
        wait_for(lambda: len(on_topic(settings)[0]) >= len(expected), 120, "every expected experience", logs)
        wait_until_settled(settings, replay=False)
    finally:
        stop(one, two)
    owned = [{n.strip() for line in p.read_text().splitlines() if "state records" in line
              for n in line.split("partitions [")[1].split("]")[0].split(",")} for p in logs]
    assert len(owned[1]) == 1 and owned[0] == {"0", "1"}, owned   # split, then the survivor took over
    distinct, repeats = on_topic(settings)
    assert_exact(distinct, expected)
    assert_no_dead_letters(settings)
