"""The replay store: bounded window + reservoir, idempotent durable batches, sampling, per-user tasks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from stream import schemas
from stream.kafka.dead_letters import envelope
from stream.replay.store import ReplayStore, StoreConfig

T0 = 1_763_900_000.0


def exp(i: int, user: str = "u", reward: float = 0.0) -> schemas.Experience:
    return schemas.Experience(
        event_id=f"r{i}:i{i % 7}:click", request_id=f"r{i}", user_id=user, action=f"i{i % 7}", position=0,
        propensity=0.5, reward=reward, reward_parts=schemas.RewardParts(click=reward), kind="click",
        policy_version=1, ts=T0 + i)


def test_batches_are_idempotent_and_offsets_travel_with_the_data(tmp_path):
    store = ReplayStore(tmp_path / "replay.db")
    assert store.add([exp(i) for i in range(10)], {("experiences", 0): 10}) == 10
    assert store.add([exp(i) for i in range(5, 15)], {("experiences", 0): 15}) == 5   # 5 repeats ignored
    assert len(store) == 15 and store.offsets() == {("experiences", 0): 15}
    store.close()
    reopened = ReplayStore(tmp_path / "replay.db")
    assert len(reopened) == 15 and reopened.offsets() == {("experiences", 0): 15}


def test_dead_letters_commit_with_their_batch_and_wait_in_the_outbox_until_cleared(tmp_path):
    store = ReplayStore(tmp_path / "replay.db")
    letter = envelope("experiences", b"not json", "malformed_json", "bad", "replay", partition=0, offset=10)
    store.add([exp(i) for i in range(10)], {("experiences", 0): 11}, [letter])
    store.close()
    reopened = ReplayStore(tmp_path / "replay.db")   # as after a kill -9 before the letter was sent
    [(row_id, pending)] = reopened.outbox()
    assert pending == letter and reopened.offsets() == {("experiences", 0): 11}
    reopened.clear_outbox([row_id])
    assert reopened.outbox() == []
    with pytest.raises(TypeError):   # a failed batch leaves neither rows, offsets nor letters behind
        reopened.add([exp(20)], {("experiences", 0): 30}, [object()])
    assert len(reopened) == 10 and reopened.outbox() == [] and reopened.offsets() == {("experiences", 0): 11}


def test_window_and_reservoir_stay_bounded(tmp_path):
    store = ReplayStore(tmp_path / "replay.db", StoreConfig(window=100, reservoir=50, seed=1))
    for start in range(0, 2000, 100):
        store.add([exp(i) for i in range(start, start + 100)])
    assert store.sizes() == {"recent": 100, "reservoir": 50}
    ids = store.event_ids()
    assert all(f"r{i}:i{i % 7}:click" in ids for i in range(1900, 2000))   # the newest are all there
    past = [int(e.split(":")[0][1:]) for e in ids if int(e.split(":")[0][1:]) < 1900]
    assert len(past) == 50 and min(past) < 950 < max(past)  # the reservoir spans the whole past


def _table(store: ReplayStore, tier: int) -> list[int]:
    return [r[0] for r in store.db.execute("SELECT seq FROM experiences WHERE tier = ? ORDER BY seq", (tier,))]


def test_the_rows_held_in_memory_follow_the_table_batch_by_batch(tmp_path):
    """Batches of every size (larger than the window too, with repeats) and a reopening with smaller bounds:
    after each, the in-memory window is the table's recent tier in order and the reservoir its past tier."""
    from stream.replay.store import PAST, RECENT

    rng = np.random.default_rng(4)
    store = ReplayStore(tmp_path / "replay.db", StoreConfig(window=40, reservoir=25, seed=3))
    start = 0
    for _ in range(60):
        size = int(rng.choice([1, 3, 17, 39, 40, 41, 90]))
        repeats = [exp(i) for i in range(max(0, start - 5), start)]   # already stored or already gone
        store.add(repeats + [exp(i) for i in range(start, start + size)])
        start += size
        assert list(store._rows.window()) == _table(store, RECENT)
        assert sorted(store._rows.slots[:store._rows.filled]) == _table(store, PAST)
        assert store._rows.newest() == max(_table(store, RECENT) + _table(store, PAST))
    assert store.sizes() == {"recent": 40, "reservoir": 25}
    newest = store.sample(300, how="recent", recent=50)   # past the window: the newest 10 of the reservoir too
    assert {e.event_id for e in newest} <= {e for e in store.event_ids()}
    seqs = _table(store, RECENT) + _table(store, PAST)
    assert sorted(store._rows.newest_rows(50)) == sorted(seqs)[-50:]
    store.close()
    smaller = ReplayStore(tmp_path / "replay.db", StoreConfig(window=10, reservoir=25, seed=3))
    assert smaller.sizes() == {"recent": 40, "reservoir": 25}   # as stored, until the next batch
    smaller.add([exp(i) for i in range(start, start + 3)])
    assert smaller.sizes() == {"recent": 10, "reservoir": 25}
    assert list(smaller._rows.window()) == _table(smaller, RECENT)
    assert sorted(smaller._rows.slots[:smaller._rows.filled]) == _table(smaller, PAST)


def test_uniform_sampling_draws_from_window_and_reservoir_alike(tmp_path):
    store = ReplayStore(tmp_path / "replay.db", StoreConfig(window=100, reservoir=100, seed=6))
    for start in range(0, 1000, 50):
        store.add([exp(i) for i in range(start, start + 50)])
    drawn = store.sample(20_000)
    from_window = sum(e.ts >= T0 + 900 for e in drawn)
    assert 9_400 < from_window < 10_600     # half of the rows held are in the window
    assert len({e.event_id for e in drawn}) == 200


def test_sampling_modes(tmp_path):
    store = ReplayStore(tmp_path / "replay.db", StoreConfig(seed=2))
    store.add([exp(i, user=f"u{i % 4}", reward=float(i % 2)) for i in range(400)])
    assert len(store.sample(1024)) == 1024
    recent = store.sample(200, how="recent", recent=50)
    assert min(e.ts for e in recent) >= T0 + 350
    store.set_priorities([f"r{i}:i{i % 7}:click" for i in range(10)], [1000.0] * 10)
    hot = store.sample(500, how="prioritised")
    assert sum(e.ts < T0 + 10 for e in hot) > 350   # 10 rows hold 10000/10390 of the priority mass
    with pytest.raises(ValueError):
        store.sample(5, how="sideways")


def test_tasks_are_users_with_enough_history_in_time_order(tmp_path):
    store = ReplayStore(tmp_path / "replay.db")
    store.add([exp(i, user="busy") for i in range(30)] + [exp(100 + i, user="new") for i in range(3)])
    assert store.users_with_at_least(5) == ["busy"]
    tasks = store.sample_tasks(10, 5)
    assert list(tasks) == ["busy"]
    assert [e.ts for e in tasks["busy"]] == sorted(e.ts for e in tasks["busy"])
    assert [e.ts for e in store.user_history("busy", limit=3)] == [T0 + 27, T0 + 28, T0 + 29]


def _writer(path: str, ready) -> None:
    store = ReplayStore(path)
    batch = 0
    while True:
        store.add([exp(batch * 50 + i) for i in range(50)], {("experiences", 0): (batch + 1) * 50})
        batch += 1
        if batch == 5:
            ready.set()


def test_kill_9_mid_write_loses_no_committed_batch(tmp_path):
    path = str(tmp_path / "replay.db")
    ready = multiprocessing.Event()
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(path, ready))
    proc.start()
    assert ready.wait(30)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    store = ReplayStore(path)
    (_, committed), = store.offsets().items()
    # Exactly the batches whose transaction committed are there: data and offsets agree.
    assert committed % 50 == 0 and committed >= 250
    assert len(store) == committed
    assert store.event_ids() == {f"r{i}:i{i % 7}:click" for i in range(committed)}
