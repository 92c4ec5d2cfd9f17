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

Values ship in half precision (``HALF``): a delta is then half the bytes, so versions
can come twice as often for the same policy traffic. A row or dense tensor ships when its
half-precision value differs from the parent's, and the published state holds exactly
those half-precision values (widened back to float32): the learner judges what readers
hold, and a change smaller than half precision waits, like one below ``tolerance``.
Full snapshots stay float32. A reader takes both kinds of delta.

``state_checksum`` names a whole state (SHA-256 of its safetensors bytes), so a reader
applies a delta only onto the state it was made from and checks the result.
"""

from __future__ import annotations

import torch

from models.tensor_bytes import digest

#: Row-indexed tables of hashed buckets: what a delta ships by row.
TABLES = ("item_id.weight", "item_bias.weight", "user_id.weight")
#: Smallest change of any value in a row that ships the row (float32 deltas).
DEFAULT_TOLERANCE = 1e-6
#: Deltas ship float32 values as float16 (those whose magnitude float16 holds).
HALF = True
_HALF_MAX = float(torch.finfo(torch.float16).max)

State = dict[str, torch.Tensor]


class DeltaError(ValueError):
    """A delta that does not fit the state it is applied to (names, shapes, rows)."""


def cpu_state(model: torch.nn.Module) -> State:
    return {n: t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}


def state_checksum(state: State) -> str:
    return digest(state)


def _narrowed(value: torch.Tensor, parent: torch.Tensor, half: bool) -> bool:
    """Whether this tensor ships in half precision: float32, and both states within float16's range."""
    return (half and value.dtype == torch.float32 and value.numel() > 0
            and float(value.abs().max()) < _HALF_MAX and float(parent.abs().max()) < _HALF_MAX)


def make_delta(parent: State, state: State, tolerance: float = DEFAULT_TOLERANCE,
               half: bool = HALF) -> tuple[State, State]:
    """(delta tensors, the published state = parent + delta)."""
    if set(parent) != set(state):
        raise DeltaError(f"parent and state hold different tensors: {sorted(set(parent) ^ set(state))}")
    delta: State = {}
    published: State = {}
    for name, value in state.items():
        before = parent[name]
        narrow = _narrowed(value, before, half)
        shipped = value.to(torch.float16) if narrow else value
        if name in TABLES:
            if narrow:
                moved = (shipped != before.to(torch.float16)).any(dim=1)
            else:
                moved = (value - before).abs().amax(dim=1) > tolerance
            rows = torch.nonzero(moved).flatten().to(torch.int64)
            delta[f"{name}.rows"] = rows
            delta[f"{name}.values"] = shipped[rows].contiguous()
            table = before.clone()
            table[rows] = shipped[rows].to(before.dtype)
            published[name] = table
        elif torch.equal(shipped, before.to(shipped.dtype)) if narrow else torch.equal(value, before):
            published[name] = before.clone()
        else:
            delta[name] = shipped.contiguous()
            published[name] = shipped.to(value.dtype, copy=True)
    return delta, published


def _fits(shipped: torch.Tensor, held: torch.Tensor) -> bool:
    """A delta's values may be the parent's dtype or, for float32, half precision."""
    return shipped.dtype == held.dtype or (shipped.dtype == torch.float16 and held.dtype == torch.float32)


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
            if values.shape != (len(rows), *value.shape[1:]) or not _fits(values, value):
                raise DeltaError(f"{name}.values is {tuple(values.shape)}, expected ({len(rows)}, "
                                 f"{', '.join(map(str, value.shape[1:]))})")
            if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= value.shape[0]
                              or len(torch.unique(rows)) != len(rows)):
                raise DeltaError(f"{name}.rows must be distinct rows of 0..{value.shape[0] - 1}")
            table = value.clone()
            table[rows] = values.to(value.dtype)
            out[name] = table
        elif name in delta:
            changed = delta[name]
            if changed.shape != value.shape or not _fits(changed, value):
                raise DeltaError(f"{name} is {tuple(changed.shape)} {changed.dtype}, expected {tuple(value.shape)} "
                                 f"{value.dtype}")
            out[name] = changed.to(value.dtype, copy=True)
        else:
            out[name] = value.clone()      # unchanged since the parent
    return out
