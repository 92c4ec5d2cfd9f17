"""Probe sets of past periods, re-scored by every published version: forgetting you can watch.

Held-out top-of-slate decisions (never trained on) are grouped by the wall-clock period
they arrived in. When a period ends its decisions become a probe set; the last ``keep``
probe sets are kept. Each published version is scored on every probe set with the same
doubly robust estimate the gate uses, and ``models.continual.ForgettingTracker`` turns
the scores into forgetting: the share of the best score any version reached on that
probe set that the latest version lost. Probe sets are labelled by age (``1`` is the
period that ended last), which keeps the label set small however long the learner runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from models.continual import ForgettingTracker
from stream import schemas
from stream.learner.batches import is_full_decision

FORGETTING = Gauge(
    "recsys_learner_forgetting_ratio",
    "Share of the best policy value any version reached on a probe set (held-out decisions of a past period) that "
    "the live version lost, by probe age in periods (1: the last period that ended).", ["probe"])
PROBE_VALUE = Gauge(
    "recsys_learner_probe_value",
    "Doubly robust estimate of the live version's reward per decision on a probe set, by probe age in periods.",
    ["probe"])


@dataclass(frozen=True)
class ProbeConfig:
    period_seconds: float = 900.0
    keep: int = 4
    #: Decisions kept per probe set (the first ones of the period).
    max_decisions: int = 2000
    #: A period with fewer decisions is not kept as a probe set (its score would be noise).
    min_decisions: int = 50

    def __post_init__(self) -> None:
        if self.period_seconds <= 0 or self.keep < 1 or self.min_decisions < 1 \
                or self.max_decisions < self.min_decisions:
            raise ValueError(f"invalid probe configuration {self}")


class ForgettingProbes:
    def __init__(self, config: ProbeConfig | None = None) -> None:
        self.config = config or ProbeConfig()
        self.tracker = ForgettingTracker()
        self.period_start: float | None = None
        self.current: list[schemas.Experience] = []
        #: (period start, decisions), oldest first.
        self.sets: list[tuple[float, list[schemas.Experience]]] = []

    def offer(self, experience: schemas.Experience, now: float) -> None:
        """A held-out experience read at wall time ``now``; only full decisions are kept."""
        self.rotate(now)
        if is_full_decision(experience) and len(self.current) < self.config.max_decisions:
            self.current.append(experience)

    def rotate(self, now: float) -> None:
        if self.period_start is None:
            self.period_start = now
            return
        if now - self.period_start < self.config.period_seconds:
            return
        if len(self.current) >= self.config.min_decisions:
            self.sets.append((self.period_start, self.current))
            for start, _ in self.sets[:-self.config.keep]:
                self.tracker.best.pop(str(start), None)
                self.tracker.latest.pop(str(start), None)
            self.sets = self.sets[-self.config.keep:]
        # A gap longer than a period (nothing read) starts the next period now, not in the past.
        self.period_start = now
        self.current = []

    def score(self, value_of: Callable[[list[schemas.Experience]], float]) -> dict[str, float]:
        """Score a new live version on every probe set and export forgetting; returns {age: forgetting}."""
        report: dict[str, float] = {}
        FORGETTING.clear()
        PROBE_VALUE.clear()
        for age, (start, decisions) in enumerate(reversed(self.sets), start=1):
            key = str(start)
            value = value_of(decisions)
            self.tracker.record(key, value)
            report[str(age)] = self.tracker.forgetting(key)
            FORGETTING.labels(str(age)).set(report[str(age)])
            PROBE_VALUE.labels(str(age)).set(value)
        return report

    def state_dict(self) -> dict:
        return {"period_start": self.period_start, "current": [schemas.encode(e) for e in self.current],
                "sets": [(start, [schemas.encode(e) for e in decisions]) for start, decisions in self.sets],
                "best": dict(self.tracker.best), "latest": dict(self.tracker.latest)}

    def load_state_dict(self, state: dict) -> None:
        decoder = schemas.decoder_for("experiences")
        self.period_start = state["period_start"]
        self.current = [decoder.decode(raw) for raw in state["current"]]
        self.sets = [(start, [decoder.decode(raw) for raw in decisions]) for start, decisions in state["sets"]]
        self.tracker.best, self.tracker.latest = dict(state["best"]), dict(state["latest"])
