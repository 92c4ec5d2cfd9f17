"""Tensors a learning step consumes: logged bandit feedback and meta-learning tasks.

Items are de-duplicated per batch (``item_bucket``/``item_text`` rows) and
referenced by index, so each item's tower runs once however often it appears.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch


def hash_ids(ids: Sequence[str], buckets: int, salt: str = "") -> np.ndarray:
    """Stable bucket of each id (crc32, identical in every process, unlike ``hash()``)."""
    prefix = salt.encode()
    return np.fromiter((zlib.crc32(prefix + i.encode()) % buckets for i in ids), dtype=np.int64, count=len(ids))


class _Tensors:
    """Shared by the tensor dataclasses below (every subclass is a dataclass)."""

    def to(self, device: torch.device | str, non_blocking: bool = False):
        return replace(self, **{  # type: ignore[type-var]
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)  # type: ignore[arg-type]
        })

    def __len__(self) -> int:
        return int(getattr(self, fields(self)[0].name).shape[0])  # type: ignore[arg-type]


@dataclass
class Batch(_Tensors):
    """B logged decisions: who, which candidates, what was shown, with what propensity, what it earned."""

    features: torch.Tensor      # (B, F) float
    user_bucket: torch.Tensor   # (B,) long
    history: torch.Tensor       # (B, text_dim) float, mean text of the user's recent clicks (zeros if none)
    item_bucket: torch.Tensor   # (M,) long, distinct items of the batch
    item_text: torch.Tensor     # (M, text_dim) float
    candidates: torch.Tensor    # (B, K) long, rows of item_* (padding rows masked out)
    candidate_mask: torch.Tensor  # (B, K) bool
    action: torch.Tensor        # (B,) long, column of ``candidates`` that was shown
    position: torch.Tensor      # (B,) long, slate position it was shown at
    propensity: torch.Tensor    # (B,) float, behaviour policy's probability of that choice
    reward: torch.Tensor        # (B,) float


    def rows(self, index: slice | torch.Tensor) -> Batch:
        """The decisions ``index`` picks (a slice or row indices); the items table stays whole."""
        shared = ("item_bucket", "item_text")
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self) if f.name not in shared})


@dataclass
class TaskBatch(_Tensors):
    """T users as meta-learning tasks: a support set to adapt on, a query set to judge the adaptation."""

    features: torch.Tensor       # (T, F)
    user_bucket: torch.Tensor    # (T,)
    history: torch.Tensor        # (T, text_dim)
    item_bucket: torch.Tensor    # (M,)
    item_text: torch.Tensor      # (M, text_dim)
    support_item: torch.Tensor   # (T, S) long rows of item_*
    support_position: torch.Tensor  # (T, S) long
    support_reward: torch.Tensor    # (T, S) float
    support_mask: torch.Tensor      # (T, S) bool
    query_item: torch.Tensor     # (T, Q)
    query_position: torch.Tensor
    query_reward: torch.Tensor
    query_mask: torch.Tensor
