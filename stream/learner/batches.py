"""Logged experiences (as the stream carries them) turned into the tensors ``models/`` learns from.

Off-policy learning compares the shown item against everything the policy could
have shown. That comparison is exact only at the top of a slate, where the logged
propensity is the probability of choosing the item among all candidates; further
down it is conditional on the items above, which a single experience does not
name. So a top-position experience that carries its candidate set becomes a full
decision row, and every other experience a one-candidate row, which trains the
reward model (every position, with its position bias) and adds nothing to the
policy-gradient term. The user's history summary is left at zero, in training and
at serve time alike; per-user taste is the fast weights' job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.batch import Batch, TaskBatch, hash_ids
from models.policy import PolicyConfig
from stream import schemas
from stream.items.embeddings import Catalogue


def is_full_decision(e: schemas.Experience) -> bool:
    """A top-of-slate experience that names what it was chosen among (see the module docstring)."""
    return e.position == 0 and bool(e.candidates) and e.action in e.candidates


class ExperienceBatcher:
    def __init__(self, config: PolicyConfig, catalogue: Catalogue) -> None:
        self.config = config
        self.catalogue = catalogue

    def fits(self, e: schemas.Experience) -> bool:
        """Whether the experience's user features have the policy's width (``Context.fits``)."""
        return e.context.fits(self.config.user_features)

    def _features(self, experiences: Sequence[schemas.Experience]) -> torch.Tensor:
        width = self.config.user_features
        out = np.zeros((len(experiences), width), dtype=np.float32)
        for row, e in enumerate(experiences):
            f = e.context.features
            if f and len(f) != width:
                raise ValueError(f"experience {e.event_id} has {len(f)} user features; the policy takes {width}")
            if f:
                out[row] = f
        return torch.from_numpy(out)

    def _items(self, items: list[str]) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
        index = {item: i for i, item in enumerate(items)}
        texts, buckets = self.catalogue.lookup(items, self.config.item_buckets)
        return index, torch.from_numpy(buckets), torch.from_numpy(texts)

    @staticmethod
    def decision(e: schemas.Experience) -> list[str]:
        """The candidates this experience is compared against (see the module docstring)."""
        if is_full_decision(e):
            return e.candidates
        return [e.action]

    def batch(self, experiences: Sequence[schemas.Experience]) -> Batch:
        rows = [self.decision(e) for e in experiences]
        items = list(dict.fromkeys(item for row in rows for item in row))
        index, item_bucket, item_text = self._items(items)
        width = max(len(r) for r in rows)
        candidates = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        action = np.zeros(len(rows), dtype=np.int64)
        for i, (e, row) in enumerate(zip(experiences, rows)):
            candidates[i, :len(row)] = [index[item] for item in row]
            mask[i, :len(row)] = True
            action[i] = row.index(e.action)
        n = len(experiences)
        return Batch(
            features=self._features(experiences),
            user_bucket=torch.from_numpy(hash_ids([e.user_id for e in experiences], self.config.user_buckets)),
            history=torch.zeros(n, self.config.text_dim),
            item_bucket=item_bucket, item_text=item_text,
            candidates=torch.from_numpy(candidates), candidate_mask=torch.from_numpy(mask),
            action=torch.from_numpy(action),
            position=torch.as_tensor([min(e.position, self.config.max_positions - 1) for e in experiences]),
            propensity=torch.as_tensor([e.propensity for e in experiences], dtype=torch.float32),
            reward=torch.as_tensor([e.reward for e in experiences], dtype=torch.float32),
        )

    def tasks(self, fresh: Sequence[schemas.Experience], histories: Sequence[Sequence[schemas.Experience]]
              ) -> TaskBatch | None:
        """Fresh outcomes as meta-learning tasks: each one's user's earlier outcomes (``histories``, what the
        scorer's memory held, possibly nothing) are the support, the fresh outcome is the query."""
        pairs = [(e, [h for h in hist if self.fits(h)]) for e, hist in zip(fresh, histories)
                 if e.kind != "purchase" and self.fits(e)]
        if not pairs:
            return None
        items = list(dict.fromkeys([e.action for e, _ in pairs] + [h.action for _, hist in pairs for h in hist]))
        index, item_bucket, item_text = self._items(items)
        width = max(1, max(len(hist) for _, hist in pairs))
        n = len(pairs)
        support_item = np.zeros((n, width), dtype=np.int64)
        support_position = np.zeros((n, width), dtype=np.int64)
        support_reward = np.zeros((n, width), dtype=np.float32)
        support_mask = np.zeros((n, width), dtype=bool)
        last = self.config.max_positions - 1
        for row, (_, hist) in enumerate(pairs):
            for col, h in enumerate(hist):
                support_item[row, col], support_position[row, col] = index[h.action], min(h.position, last)
                support_reward[row, col], support_mask[row, col] = h.reward, True
        queries = [e for e, _ in pairs]
        return TaskBatch(
            features=self._features(queries),
            user_bucket=torch.from_numpy(hash_ids([e.user_id for e in queries], self.config.user_buckets)),
            history=torch.zeros(n, self.config.text_dim),
            item_bucket=item_bucket, item_text=item_text,
            support_item=torch.from_numpy(support_item), support_position=torch.from_numpy(support_position),
            support_reward=torch.from_numpy(support_reward), support_mask=torch.from_numpy(support_mask),
            query_item=torch.as_tensor([[index[e.action]] for e in queries]),
            query_position=torch.as_tensor([[min(e.position, last)] for e in queries]),
            query_reward=torch.as_tensor([[e.reward] for e in queries], dtype=torch.float32),
            query_mask=torch.ones(n, 1, dtype=torch.bool),
        )
