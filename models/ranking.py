"""Ranking quality of estimated rewards against what users did: AUC, and AUC per user (GAUC).

Used where the logs say what was rewarded but not what else could have been shown
(MovieLens): the benchmark's period-by-period protocol and ``recsys-stream evaluate
--ranking-only``.
"""

from __future__ import annotations

import math

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); nan when one class is missing."""
    positives = labels > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]       # average rank of ties, 1-based
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC weighted by the user's ratings, over users with both classes."""
    total, weight = 0.0, 0
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for rows in np.split(order, bounds):
        value = auc(labels[rows], scores[rows])
        if not math.isnan(value):
            total += value * len(rows)
            weight += len(rows)
    return total / weight if weight else float("nan")
