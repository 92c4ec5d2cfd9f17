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

    def _features(self, experiences: Sequence[schemas.Experience]) -> torch.Tensor:
        width = self.config.user_features
        out = np.zeros((len(experiences), width), dtype=np.float32)
        for row, e in enumerate(experiences):
            f = e.context.features[:width]
            out[row, :len(f)] = f
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

    def tasks(self, histories: dict[str, list[schemas.Experience]], support: int, query: int) -> TaskBatch | None:
        """One meta-learning task per user: the first ``support`` click outcomes adapt, the next ``query`` test.

        The reward is the click part, as the scorer adapts on clicks (purchases are follow-ups)."""
        users = []
        for user, history in histories.items():
            outcomes = [e for e in history if e.kind != "purchase"]
            if len(outcomes) >= support + query:
                users.append((user, outcomes[:support + query]))
        if not users:
            return None
        items = list(dict.fromkeys(e.action for _, xs in users for e in xs))
        index, item_bucket, item_text = self._items(items)
        item = torch.as_tensor([[index[e.action] for e in xs] for _, xs in users])
        position = torch.as_tensor([[min(e.position, self.config.max_positions - 1) for e in xs] for _, xs in users])
        reward = torch.as_tensor([[e.reward_parts.click for e in xs] for _, xs in users], dtype=torch.float32)
        ones = lambda m: torch.ones(len(users), m, dtype=torch.bool)  # noqa: E731
        return TaskBatch(
            features=self._features([xs[0] for _, xs in users]),
            user_bucket=torch.from_numpy(hash_ids([u for u, _ in users], self.config.user_buckets)),
            history=torch.zeros(len(users), self.config.text_dim),
            item_bucket=item_bucket, item_text=item_text,
            support_item=item[:, :support], support_position=position[:, :support],
            support_reward=reward[:, :support], support_mask=ones(support),
            query_item=item[:, support:], query_position=position[:, support:],
            query_reward=reward[:, support:], query_mask=ones(query),
        )
