"""A memory of past tastes the serving path uses: retained user towers, mixed per user by a learned gate.

Regularising one set of weights against forgetting (EWC, distillation, replay) trades
what the model learns now against what it knew, and on the project's streams it cost
reward where the world changed and kept nothing measurable where tastes came back.
Here nothing is held back: the current user tower learns fresh data at full speed,
and every ``AgentConfig.retain_every`` versions a frozen copy of it is kept
(``PolicyConfig.experts`` copies, of ages spread out so that a few reach far back). A small gate, reading the same
inputs as the tower (features, user id, history), weighs the current tower and the
retained ones per user, and learns on every update which of them explains fresh
outcomes best (towers and items held fixed, so the gate cannot move them). When a
segment's old tastes come back, its fresh outcomes are explained by a tower retained
before they left, and the gate turns to it for users who look like that segment: a
recall that needs no one to say when (the sequence-of-models idea of ASMG, RecSys 2021,
with the choice made per user from their inputs).

A mixture of user vectors is a mixture of scores (a score is linear in the user
vector), so serving stays one user vector per request (``models/serving.py``).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


class RetainedTowers(nn.Module):
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    stamp: torch.Tensor

    def __init__(self, slots: int, inputs: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.slots = slots
        self.register_buffer("w1", torch.zeros(slots, hidden, inputs))
        self.register_buffer("b1", torch.zeros(slots, hidden))
        self.register_buffer("w2", torch.zeros(slots, dim, hidden))
        self.register_buffer("b2", torch.zeros(slots, dim))
        #: When each slot was filled (0: empty), counted in retentions.
        self.register_buffer("stamp", torch.zeros(slots))
        #: Logits of (current, slot 1..K) per user.
        self.gate = nn.Linear(inputs, slots + 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def towers(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, dim): every retained tower's user vector."""
        h = torch.relu(torch.einsum("khi,bi->bkh", self.w1, x) + self.b1)
        return torch.einsum("kdh,bkh->bkd", self.w2, h) + self.b2

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K): the gate's weights of the current tower and each filled slot (empty ones get none)."""
        logits = self.gate(x)
        empty = torch.cat([torch.zeros(1, dtype=torch.bool, device=x.device), torch.eq(self.stamp, 0)])
        return torch.softmax(logits.masked_fill(empty, float("-inf")), dim=-1)

    def mix(self, x: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The served user vector: the gate's mixture of the current tower's and the retained ones'."""
        if not bool((self.stamp > 0).any()):
            return current
        w = self.weights(x)
        return w[:, :1] * current + torch.einsum("bk,bkd->bd", w[:, 1:], self.towers(x))

    @torch.no_grad()
    def retain(self, tower: nn.Sequential) -> int:
        """Keep a frozen copy of ``tower`` (Linear, ReLU, Linear) in the oldest slot; its gate row starts as the
        current tower's, so a copy equal to the current tower changes nothing served. Returns the slot."""
        first, second = cast(nn.Linear, tower[0]), cast(nn.Linear, tower[2])
        slot = self._slot_to_fill()
        self.w1[slot].copy_(first.weight)
        self.b1[slot].copy_(first.bias)
        self.w2[slot].copy_(second.weight)
        self.b2[slot].copy_(second.bias)
        self.stamp[slot] = self.stamp.max() + 1
        self.gate.weight[slot + 1].copy_(self.gate.weight[0])
        self.gate.bias[slot + 1].copy_(self.gate.bias[0])
        return slot

    def _slot_to_fill(self) -> int:
        """An empty slot, else the copy whose loss leaves the smallest gap between the copies around it (never
        the oldest): the ages kept spread out roughly geometrically, so a few slots reach far back."""
        stamps = self.stamp.tolist()
        if 0.0 in stamps:
            return stamps.index(0.0)
        order = sorted(range(self.slots), key=lambda i: stamps[i])
        ages = [stamps[i] for i in order] + [max(stamps) + 1]
        if self.slots == 1:
            return order[0]
        gap = {j: ages[j + 1] - ages[j - 1] for j in range(1, self.slots)}
        return order[min(gap, key=lambda j: (gap[j], j))]
