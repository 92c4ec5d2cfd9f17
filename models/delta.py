"""A policy version as a delta of its parent: the embedding rows that moved, plus the small dense tensors.

Full weights are ~4.4 MB, of which the hashed user and item tables are almost all; a
learner publishing every few seconds moves a few hundred of their 16k rows. A delta
ships those rows (``<table>.rows`` indices and ``<table>.values``) and each dense tensor
that changed at all, whole (at most ~140 KB; the history projection, which training
never moves, stays behind). Adam keeps moving a row for hundreds of steps after its last
gradient by ever smaller amounts, so a row ships only when some value moved by more
than ``tolerance`` since the *published* parent. What is published is then exactly
parent + delta (``published``), the learner judges and remembers that, and a change
left behind accumulates until it ships: readers and learner never disagree by a bit.

``state_checksum`` names a whole state (SHA-256 of its safetensors bytes), so a reader
applies a delta only onto the state it was made from and checks the result.
"""

from __future__ import annotations

import torch

from models.tensor_bytes import digest

#: Row-indexed tables of hashed buckets: what a delta ships by row.
TABLES = ("item_id.weight", "item_bias.weight", "user_id.weight")
#: Smallest change of any value in a row that ships the row.
DEFAULT_TOLERANCE = 1e-6

State = dict[str, torch.Tensor]


class DeltaError(ValueError):
    """A delta that does not fit the state it is applied to (names, shapes, rows)."""


def cpu_state(model: torch.nn.Module) -> State:
    return {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}


def state_checksum(state: State) -> str:
    return digest(state)


def make_delta(parent: State, state: State, tolerance: float = DEFAULT_TOLERANCE) -> tuple[State, State]:
    """(delta tensors, the published state = parent + delta)."""
    if set(parent) != set(state):
        raise DeltaError(f"parent and state hold different tensors: {sorted(set(parent) ^ set(state))}")
    delta: State = {}
    published: State = {}
    for name, value in state.items():
        if name in TABLES:
            moved = (value - parent[name]).abs().amax(dim=1) > tolerance
            rows = torch.nonzero(moved).flatten().to(torch.int64)
            delta[f"{name}.rows"] = rows
            delta[f"{name}.values"] = value[rows].contiguous()
            table = parent[name].clone()
            table[rows] = value[rows]
            published[name] = table
        elif torch.equal(value, parent[name]):
            published[name] = parent[name].clone()
        else:
            delta[name] = value.contiguous()
            published[name] = value.clone()
    return delta, published


def apply_delta(parent: State, delta: State) -> State:
    """The state a delta describes on top of ``parent``; DeltaError when they do not fit."""
    tables = {f"{t}.{part}" for t in TABLES for part in ("rows", "values")}
    dense = set(parent) - set(TABLES)
    if not tables <= set(delta) or not set(delta) <= tables | dense:
        raise DeltaError(f"delta tensors {sorted(set(delta) ^ tables - dense)} do not match the parent's")
    out: State = {}
    for name, value in parent.items():
        if name in TABLES:
            rows, values = delta[f"{name}.rows"], delta[f"{name}.values"]
            if rows.dtype != torch.int64 or rows.dim() != 1:
                raise DeltaError(f"{name}.rows must be a 1-d int64 tensor")
            if values.shape != (len(rows), *value.shape[1:]) or values.dtype != value.dtype:
                raise DeltaError(f"{name}.values is {tuple(values.shape)}, expected ({len(rows)}, "
                                 f"{', '.join(map(str, value.shape[1:]))})")
            if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= value.shape[0]
                              or len(torch.unique(rows)) != len(rows)):
                raise DeltaError(f"{name}.rows must be distinct rows of 0..{value.shape[0] - 1}")
            table = value.clone()
            table[rows] = values
            out[name] = table
        elif name in delta:
            changed = delta[name]
            if changed.shape != value.shape or changed.dtype != value.dtype:
                raise DeltaError(f"{name} is {tuple(changed.shape)}, expected {tuple(value.shape)}")
            out[name] = changed.clone()
        else:
            out[name] = value.clone()      # unchanged since the parent
    return out
