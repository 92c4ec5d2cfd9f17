"""Simulated traffic as the event records the outside world sends (impressions, clicks, purchases).

Shared by the stream tests, the stream benchmark and the demo. Records are plain
dicts shaped like the topic contracts (docs/ARCHITECTURE.md, "Topics and contracts"), so this module stays
free of Kafka; a slate is chosen uniformly at random unless the caller passes
slates (e.g. from a policy), and the exact propensity of each shown item is logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sim.world import World


@dataclass(frozen=True)
class TrafficConfig:
    candidates: int = 20
    slate_size: int = 5
    #: Seconds between consecutive requests (event time).
    request_interval: float = 0.001
    #: A click follows its impression after this many seconds (uniform range).
    click_delay: tuple[float, float] = (0.5, 5.0)
    #: A purchase follows its click after this many seconds (uniform range).
    purchase_delay: tuple[float, float] = (10.0, 60.0)
    #: Share of clicks sent without a request_id (joined by user and item instead).
    clicks_without_request_id: float = 0.0


def uniform_slate_propensities(n_candidates: int, slate_size: int) -> list[float]:
    """Per position, the probability a uniform random slate picked the item shown there.

    Propensities across the project are sequential (Plackett-Luce) ones: the
    probability of picking this item at this position given the items above it.
    For a uniform policy that is ``1 / (candidates - position)``.
    """
    return [1.0 / (n_candidates - p) for p in range(slate_size)]


def generate(
    world: World,
    n_requests: int,
    start_ts: float,
    config: TrafficConfig | None = None,
    batch: int = 1000,
    policy_version: int = 0,
) -> Iterator[tuple[str, dict]]:
    """Yield ``(logical topic, record)`` per event, in the order they are created.

    Event times are realistic (clicks seconds after the impression, purchases later),
    so records are not in event-time order; ``sorted_by_time`` orders them.
    """
    cfg = config or TrafficConfig()
    rng = world.rng
    propensities = uniform_slate_propensities(cfg.candidates, cfg.slate_size)
    made = 0
    while made < n_requests:
        n = min(batch, n_requests - made)
        users = world.sample_users(n)
        features = world.users.features[users]
        # Candidates come in random order, so their first slate_size form a uniform random slate.
        slates = world.candidates(n, cfg.candidates)[:, : cfg.slate_size]
        feedback = world.feedback(users, slates)
        click_delay = rng.uniform(*cfg.click_delay, size=slates.shape)
        buy_delay = rng.uniform(*cfg.purchase_delay, size=slates.shape)
        anonymous = rng.random(slates.shape) < cfg.clicks_without_request_id
        for r in range(n):
            number = made + r
            ts = start_ts + number * cfg.request_interval
            user = str(world.users.user_ids[users[r]])
            request = f"req-{number}"
            items = world.catalog.item_ids[slates[r]]
            yield "impressions", {
                "event_id": f"imp-{number}",
                "request_id": request,
                "user_id": user,
                "ts": ts,
                "policy_version": policy_version,
                "context": {
                    "features": [round(float(x), 4) for x in features[r]],
                    "attrs": {"segment": str(int(world.users.segment[users[r]]))},
                },
                "shown": [
                    {"item_id": str(item), "position": p, "propensity": propensities[p]}
                    for p, item in enumerate(items)
                ],
            }
            for p in np.flatnonzero(feedback.clicks[r]):
                click_ts = ts + float(click_delay[r, p])
                click = {"event_id": f"clk-{number}-{p}", "user_id": user,
                         "item_id": str(items[p]), "ts": click_ts}
                if not anonymous[r, p]:
                    click["request_id"] = request
                yield "clicks", click
                if feedback.purchases[r, p]:
                    yield "purchases", {
                        "event_id": f"pur-{number}-{p}", "request_id": request, "user_id": user,
                        "item_id": str(items[p]), "value": round(float(feedback.values[r, p]), 2),
                        "ts": click_ts + float(buy_delay[r, p]),
                    }
        made += n


def sorted_by_time(events: Iterator[tuple[str, dict]]) -> list[tuple[str, dict]]:
    return sorted(events, key=lambda e: e[1]["ts"])
