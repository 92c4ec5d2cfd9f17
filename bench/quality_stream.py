"""One recorded stream of the simulated shop, replayed identically to every policy.

Who comes, which candidates they are offered, and the random numbers that decide
their clicks and purchases are drawn once per seed. A policy only picks a column;
its click is ``u_click < P(click | user, item)`` with the stream's own ``u_click``
(common random numbers), so two policies that pick the same item for a request get
the same outcome, and differences between policies are theirs, not the dice's.
The world's ground truth (expected reward of every candidate, with drift applied
at that moment) is recorded too, for regret and for the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.world import Drift, World, WorldConfig


@dataclass(frozen=True)
class StreamConfig:
    requests: int = 20_000
    round_size: int = 100
    candidates: int = 20
    n_users: int = 2000
    n_items: int = 300
    new_users: int = 400
    new_items: int = 30
    #: Segment 0's tastes shift during this share of the stream, then return.
    drift: tuple[float, float] = (0.35, 0.65)
    drift_segment: int = 0
    drift_shift: int = 3
    #: ``drift``: segment 0's tastes rotate during the span and return. ``away``: segment 0 makes no requests
    #: during the span while every other segment's tastes rotate for good; it comes back with its tastes
    #: unchanged, so what a learner kept of it is what it did not forget.
    scenario: str = "drift"

    def __post_init__(self) -> None:
        if self.requests < self.round_size or self.round_size < 1 or self.candidates < 2:
            raise ValueError(f"invalid stream configuration {self}")
        if self.scenario not in ("drift", "away"):
            raise ValueError(f"scenario must be drift or away, not {self.scenario!r}")
        if not 0 < self.drift[0] < self.drift[1] < 1:
            raise ValueError("drift must be (start, end) shares of the stream with 0 < start < end < 1")


@dataclass
class Stream:
    world: World
    config: StreamConfig
    users: np.ndarray           # (N,) user index
    candidates: np.ndarray      # (N, K) item index
    step: np.ndarray            # (N,) request step
    nth: np.ndarray             # (N,) how many requests the user made before this one
    p_click: np.ndarray         # (N, K) click probability at the top position
    p_buy: np.ndarray           # (N, K) purchase probability given a click
    expected: np.ndarray        # (N, K) expected reward of each candidate at the top
    u_click: np.ndarray         # (N,) the stream's dice
    u_buy: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def rounds(self):
        size = self.config.round_size
        for start in range(0, len(self), size):
            yield slice(start, min(start + size, len(self)))

    def outcome(self, rows: slice, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(reward, click, expected reward) of showing candidates[rows][i, choice[i]] at the top."""
        index = np.arange(len(choice))
        click = self.u_click[rows] < self.p_click[rows][index, choice]
        buy = click & (self.u_buy[rows] < self.p_buy[rows][index, choice])
        w = self.world.weights
        items = self.candidates[rows][index, choice]
        reward = w.click * click + buy * (w.purchase + w.value * self.world.catalog.price[items])
        return reward.astype(np.float32), click, self.expected[rows][index, choice]

    def phase(self) -> np.ndarray:
        """(N,) 0 before the drift, 1 during, 2 after the segment's tastes returned."""
        start, end = (int(self.config.requests * f) for f in self.config.drift)
        return np.digitize(self.step, [start, end])


def drifts_of(config: StreamConfig, start: int, end: int) -> tuple[Drift, ...]:
    if config.scenario == "drift":
        return (Drift(config.drift_segment, start, end, config.drift_shift),)
    others = tuple(Drift(s, start, config.requests, config.drift_shift)
                   for s in range(WorldConfig().n_segments) if s != config.drift_segment)
    return (Drift(config.drift_segment, start, end, kind="away"), *others)


def record_stream(config: StreamConfig, seed: int) -> Stream:
    n = config.requests
    start, end = (int(n * f) for f in config.drift)
    world = World(WorldConfig(seed=seed, n_users=config.n_users, n_items=config.n_items, new_users=config.new_users,
                              new_items=config.new_items, horizon=n, drifts=drifts_of(config, start, end)))
    k = config.candidates
    users, candidates = np.zeros(n, dtype=np.int64), np.zeros((n, k), dtype=np.int64)
    p_click, p_buy, expected = (np.zeros((n, k), dtype=np.float32) for _ in range(3))
    nth = np.zeros(n, dtype=np.int64)
    behaviour = world.behaviour
    for s in range(0, n, config.round_size):
        rows = slice(s, min(s + config.round_size, n))
        world.set_clock(s)
        u = world.sample_users(rows.stop - s)
        c = world.candidates(len(u), k)
        users[rows], candidates[rows] = u, c
        aff = world.affinity(u, c)
        p_click[rows] = behaviour.click_given_examined(aff, world.catalog.quality[c])
        p_buy[rows] = behaviour.purchase_given_click(aff, world.catalog.price[c])
        expected[rows] = world.expected_item_reward(u, c)
        for i, user in enumerate(u):            # repeats within a round count in order
            nth[s + i] = world.interactions[user]
            world.interactions[user] += 1
    rng = np.random.default_rng(seed + 10_000)
    return Stream(world, config, users, candidates, np.arange(n), nth, p_click, p_buy, expected,
                  rng.random(n, dtype=np.float32), rng.random(n, dtype=np.float32))
