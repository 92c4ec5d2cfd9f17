"""Each item's recent surprise: how far its outcomes fell from what the served version predicted.

A version learns an item only as fast as the learner turns and publishes, and a new
item starts from its text alone. Its first outcomes already say more: if users click
it more than the version expects, every later request should know. So the server keeps,
per item, a decayed sum of residuals (outcome minus the version's estimate for that
user, adapted to the user's earlier outcomes, so a user's taste is not taken for the
item's) and adds the shrunk mean ``sum / (weight + prior_weight)`` to the item's bias
at serve time: the item-side twin of the users' fast weights, evidence in real time
with no training step.

How far to trust it is estimated, not set (empirical Bayes): ``prior_weight`` is the
residuals' noise variance over the variance of the items' true offsets, both measured
from the residuals themselves (each item's mean residual varies by its true offset
plus its noise). Where items do differ from what the version says (MovieLens: movies
new in a period) the weight comes out near 10 outcomes and the shift lifts next-period
AUC; where they do not (the simulator, whose items have no effect of their own beyond
what the model learns) it grows until the shift is negligible, instead of adding noise.
Tuning in ``docs/benchmarks/notes/2026-12-07-item-evidence.md``.

Rows are the caller's item indices (the scorer's catalogue rows). One writer at a time
(the scorer's experience follower); readers need no lock: a table is replaced whole
when it grows, and a row's figures are one row of it.
"""

from __future__ import annotations

import threading

import numpy as np

#: Each new outcome of an item keeps this share of the weight of the ones before it.
DECAY = 0.97
#: The noise variance is measured over about this many of the latest outcomes (all items together).
NOISE_HORIZON = 20_000
#: Outcomes seen before the first estimate of the prior weight (no shift before), and between two.
FIRST_ESTIMATE, REESTIMATE_EVERY = 1_000, 500
#: Bounds of the estimated prior weight, in outcomes (the upper one shifts nothing measurable).
MIN_PRIOR_WEIGHT, MAX_PRIOR_WEIGHT = 1.0, 1e6
#: A residual counts at most this much either way: a forged or mis-scaled reward (an experience may carry any
#: finite float) must not own an item's bias or the noise estimate.
MAX_RESIDUAL = 10.0


class ItemEvidence:
    """Decayed residual sums per item row; ``offsets`` is what to add to those items' biases.

    ``prior_weight`` fixes the shrinkage instead of estimating it (tests, probes)."""

    def __init__(self, decay: float = DECAY, capacity: int = 1024, prior_weight: float | None = None) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], not {decay}")
        if prior_weight is not None and prior_weight <= 0:
            raise ValueError(f"prior_weight must be > 0, not {prior_weight}")
        self.decay, self.fixed = decay, prior_weight
        self.prior_weight = prior_weight if prior_weight is not None else MAX_PRIOR_WEIGHT
        # Per row: residual sum, weight (sum of the decayed weights), sum of the squared weights.
        self._table = np.zeros((capacity, 3), dtype=np.float64)
        self._noise = np.zeros(2)           # decayed sum of squared residuals, and its weight
        self._writing = threading.Lock()
        self.outcomes = 0
        self._next_estimate = FIRST_ESTIMATE

    def offsets(self, rows: np.ndarray) -> np.ndarray:
        """(n,) shrunk mean residual of each row; 0 for a row with no evidence."""
        table, weight = self._table, self.prior_weight
        rows = np.asarray(rows, dtype=np.int64)
        inside = rows < len(table)
        picked = table[np.where(inside, rows, 0)]
        return np.where(inside, picked[:, 0] / (picked[:, 1] + weight), 0.0)

    def record(self, rows: np.ndarray, residuals: np.ndarray) -> None:
        """Outcomes in the order they happened: ``residuals`` = outcome minus the version's estimate. A residual
        that is not finite is skipped and the rest are clipped to ``MAX_RESIDUAL`` (the scorer's experience
        follower calls this: bad input must not stop it)."""
        rows = np.asarray(rows, dtype=np.int64)
        residuals = np.asarray(residuals, dtype=np.float64)
        if len(rows) and rows.min() < 0:
            raise ValueError("item rows must be >= 0")
        finite = np.isfinite(residuals)
        if not finite.all():
            rows, residuals = rows[finite], residuals[finite]
        if len(rows) == 0:
            return
        residuals = np.clip(residuals, -MAX_RESIDUAL, MAX_RESIDUAL)
        with self._writing:
            table = self._table
            top = int(rows.max()) + 1
            if top > len(table):
                grown = np.zeros((max(top, 2 * len(table)), 3), dtype=np.float64)
                grown[:len(table)] = table
                self._table = table = grown
            decay, squared = self.decay, self.decay * self.decay
            keep = 1.0 - 1.0 / NOISE_HORIZON
            noise = self._noise
            for row, residual in zip(rows.tolist(), residuals.tolist()):
                entry = table[row]
                entry[0] = decay * entry[0] + residual
                entry[1] = decay * entry[1] + 1.0
                entry[2] = squared * entry[2] + 1.0
                noise[0] = keep * noise[0] + residual * residual
                noise[1] = keep * noise[1] + 1.0
            self.outcomes += len(rows)
            if self.fixed is None and self.outcomes >= self._next_estimate:
                self.prior_weight = self._estimate(table)
                self._next_estimate = self.outcomes + REESTIMATE_EVERY

    def _estimate(self, table: np.ndarray) -> float:
        """Noise variance over the variance of the items' true offsets (method of moments: an item's mean
        residual m has E[m^2] = tau^2 + sigma^2 * sum(w^2) / sum(w)^2 with decayed weights w)."""
        held = table[table[:, 1] > 0]
        sigma2 = self._noise[0] / self._noise[1]
        if len(held) == 0 or sigma2 <= 0:
            return MAX_PRIOR_WEIGHT
        total, weight, squares = held[:, 0], held[:, 1], held[:, 2]
        mean = total / weight
        tau2 = float(np.sum(weight * (mean * mean - sigma2 * squares / (weight * weight))) / np.sum(weight))
        if tau2 <= 0:
            return MAX_PRIOR_WEIGHT
        return float(np.clip(sigma2 / tau2, MIN_PRIOR_WEIGHT, MAX_PRIOR_WEIGHT))

    def __len__(self) -> int:
        """Rows with any evidence."""
        return int(np.count_nonzero(self._table[:, 1]))
