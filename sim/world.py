"""The simulated shop: users, items and behaviour on a clock, with scheduled drift.

The clock counts requests (one request = one slate shown and reacted to). On a
schedule a segment's tastes shift (its topic preferences rotate) and later return,
or a segment goes away while the others' tastes move and comes back unchanged, so
forgetting can be measured; new users arrive (cold start) and new items are
released (item cold start). All randomness comes from one seeded generator, and
every operation works on whole batches of requests at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.behaviour import BehaviourModel, RewardWeights
from sim.catalog import Catalog, make_catalog
from sim.users import Population, make_population


@dataclass(frozen=True)
class Drift:
    """Between ``start`` and ``end`` (request steps) the segment's preferences are rotated (``rotate``),
    or its users make no requests at all (``away``)."""

    segment: int
    start: int
    end: int
    shift: int = 3
    kind: str = "rotate"

    def __post_init__(self) -> None:
        if self.kind not in ("rotate", "away"):
            raise ValueError(f"drift kind must be rotate or away, not {self.kind!r}")


@dataclass(frozen=True)
class WorldConfig:
    n_users: int = 2000
    n_items: int = 300
    n_topics: int = 8
    n_features: int = 16
    n_segments: int = 4
    #: Spread of personal taste around the segment's, and how much of it features reveal.
    individuality: float = 1.2
    feature_personal: float = 0.2
    new_users: int = 0
    new_items: int = 0
    #: Steps over which new users arrive and new items are released.
    horizon: int = 100_000
    drifts: tuple[Drift, ...] = ()
    #: Extra sampling weight of new users still in their first ``cold_start_window`` requests.
    new_user_boost: float = 20.0
    cold_start_window: int = 20
    behaviour: BehaviourModel = field(default_factory=BehaviourModel)
    weights: RewardWeights = field(default_factory=RewardWeights)
    seed: int = 0


@dataclass
class Feedback:
    clicks: np.ndarray      # (n, k) bool
    purchases: np.ndarray   # (n, k) bool
    values: np.ndarray      # (n, k) float32, purchase value (0 where no purchase)

    def rewards(self, weights: RewardWeights) -> np.ndarray:
        return weights.click * self.clicks + weights.purchase * self.purchases + weights.value * self.values


class World:
    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = cfg = config or WorldConfig()
        self.rng = np.random.default_rng(cfg.seed)
        self.catalog: Catalog = make_catalog(
            self.rng, cfg.n_items, cfg.n_topics, cfg.new_items, 1, cfg.horizon)
        self.users: Population = make_population(
            self.rng, cfg.n_users, cfg.n_topics, cfg.n_features, cfg.n_segments,
            cfg.new_users, 1, cfg.horizon,
            individuality=cfg.individuality, feature_personal=cfg.feature_personal)
        self._base_preference = self.users.preference.copy()
        self.behaviour = cfg.behaviour
        self.weights = cfg.weights
        self.step = 0
        self.interactions = np.zeros(len(self.users), dtype=np.int64)
        self._active_drifts: frozenset[Drift] = frozenset()
        self._apply_drifts()

    # -- clock -------------------------------------------------------------------
    def advance(self, n: int) -> None:
        self.step += int(n)
        self._apply_drifts()

    def set_clock(self, step: int) -> None:
        """Move the clock anywhere (e.g. back before a drift, to score a probe set of that period)."""
        self.step = int(step)
        self._apply_drifts()

    def active_drifts(self) -> frozenset[Drift]:
        return self._active_drifts

    def _apply_drifts(self) -> None:
        active = frozenset(d for d in self.config.drifts if d.start <= self.step < d.end)
        if active == self._active_drifts:
            return
        self._active_drifts = active
        preference = self._base_preference.copy()
        for drift in active:
            if drift.kind != "rotate":
                continue
            rows = self.users.segment == drift.segment
            preference[rows] = np.roll(preference[rows], drift.shift, axis=1)
        self.users.preference[:] = preference

    # -- traffic ------------------------------------------------------------------
    def sample_users(self, n: int) -> np.ndarray:
        """Users making the next ``n`` requests; new users are boosted through their first requests."""
        arrived = self.users.arrived(self.step)
        away = [d.segment for d in self._active_drifts if d.kind == "away"]
        if away:
            arrived = arrived[~np.isin(self.users.segment[arrived], away)]
        new = (self.users.arrival_step[arrived] > 0) & (
            self.interactions[arrived] < self.config.cold_start_window)
        if not new.any():
            return arrived[self.rng.integers(0, len(arrived), size=n)]
        weights = 1.0 + self.config.new_user_boost * new
        return self.rng.choice(arrived, size=n, p=weights / weights.sum())

    def candidates(self, n: int, k: int) -> np.ndarray:
        """(n, k) distinct released items per request, in uniformly random order.

        The k smallest of i.i.d. random keys, ordered by key: the first k of a uniform
        random permutation, so any prefix is itself a uniform random slate.
        """
        released = self.catalog.released(self.step)
        if k > len(released):
            raise ValueError(f"asked for {k} candidates but only {len(released)} items are released")
        keys = self.rng.random((n, len(released)), dtype=np.float32)
        chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(keys, chosen, axis=1), axis=1)
        return released[np.take_along_axis(chosen, order, axis=1)]

    # -- ground truth ---------------------------------------------------------------
    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, k) preference of each request's user for each of its items."""
        return np.einsum("nt,nkt->nk", self.users.preference[users], self.catalog.topics[items])

    def click_probability(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        positions = np.arange(slates.shape[1])
        examined = self.behaviour.examination(positions)[None, :]
        return examined * self.behaviour.click_given_examined(
            self.affinity(users, slates), self.catalog.quality[slates])

    def expected_item_reward(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Expected reward of each item if examined (position 1), for oracle ranking and regret."""
        aff = self.affinity(users, items)
        p_click = self.behaviour.click_given_examined(aff, self.catalog.quality[items])
        p_buy = self.behaviour.purchase_given_click(aff, self.catalog.price[items])
        w = self.weights
        return p_click * (w.click + p_buy * (w.purchase + w.value * self.catalog.price[items]))

    def expected_reward(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """(n,) expected total reward of each slate, position effects included."""
        examined = self.behaviour.examination(np.arange(slates.shape[1]))[None, :]
        return (examined * self.expected_item_reward(users, slates)).sum(axis=1)

    def oracle_slates(self, users: np.ndarray, candidates: np.ndarray, slate_size: int) -> np.ndarray:
        """The best slate from each candidate set: items by expected reward, best first."""
        value = self.expected_item_reward(users, candidates)
        order = np.argsort(-value, axis=1)[:, :slate_size]
        return np.take_along_axis(candidates, order, axis=1)

    # -- what users do -----------------------------------------------------------------
    def feedback(self, users: np.ndarray, slates: np.ndarray) -> Feedback:
        """Sample clicks and purchases for shown slates; counts the interactions and advances the clock."""
        aff = self.affinity(users, slates)
        p_click = self.behaviour.examination(np.arange(slates.shape[1]))[None, :] * \
            self.behaviour.click_given_examined(aff, self.catalog.quality[slates])
        clicks = self.rng.random(p_click.shape, dtype=np.float32) < p_click
        p_buy = self.behaviour.purchase_given_click(aff, self.catalog.price[slates])
        purchases = clicks & (self.rng.random(p_buy.shape, dtype=np.float32) < p_buy)
        values = np.where(purchases, self.catalog.price[slates], 0.0).astype(np.float32)
        np.add.at(self.interactions, users, 1)
        self.advance(len(users))
        return Feedback(clicks, purchases, values)
