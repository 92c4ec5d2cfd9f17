"""How users react to a slate: examination by position, clicks, purchases given price.

A cascade-free position-based model: position p is examined with probability
``1 / (1 + p) ** eta``; an examined item is clicked with a probability that rises
with the user's affinity for its topics and its quality; a click turns into a
purchase less often the pricier the item. Everything is exact, so an oracle and
the regret of any policy can be computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RewardWeights:
    """Reward = click * w_click + purchase * w_purchase + purchase value * w_value."""

    click: float = 1.0
    purchase: float = 2.0
    value: float = 0.0


@dataclass(frozen=True)
class BehaviourModel:
    position_eta: float = 0.8
    # Sharp tastes: a user's favourite topics are clicked far more than the rest, so a
    # handful of interactions says a lot about a new user (what meta-learning exploits).
    click_scale: float = 3.0
    click_offset: float = -2.5
    purchase_offset: float = -0.8
    purchase_affinity: float = 0.6
    purchase_price: float = 0.5

    def examination(self, positions: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + positions) ** self.position_eta

    def click_given_examined(self, affinity: np.ndarray, quality: np.ndarray) -> np.ndarray:
        return _sigmoid(self.click_scale * affinity + quality + self.click_offset)

    def purchase_given_click(self, affinity: np.ndarray, price: np.ndarray) -> np.ndarray:
        z = self.purchase_offset + self.purchase_affinity * affinity - self.purchase_price * np.log1p(price / 20.0)
        return _sigmoid(z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))
