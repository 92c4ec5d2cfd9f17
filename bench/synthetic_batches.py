"""Random batches shaped like the learner's input: throughput measurements and tests need no data or stream."""

from __future__ import annotations

import torch

from models.batch import Batch, TaskBatch
from models.policy import PolicyConfig


def synthetic_batch(config: PolicyConfig, size: int, candidates: int, items: int, gen: torch.Generator) -> Batch:
    text = torch.nn.functional.normalize(torch.randn(items, config.text_dim, generator=gen), dim=-1)
    return Batch(
        features=torch.randn(size, config.user_features, generator=gen),
        user_bucket=torch.randint(0, config.user_buckets, (size,), generator=gen),
        history=torch.zeros(size, config.text_dim),
        item_bucket=torch.randint(0, config.item_buckets, (items,), generator=gen),
        item_text=text,
        candidates=torch.randint(0, items, (size, candidates), generator=gen),
        candidate_mask=torch.ones(size, candidates, dtype=torch.bool),
        action=torch.randint(0, candidates, (size,), generator=gen),
        position=torch.randint(0, 5, (size,), generator=gen),
        propensity=torch.full((size,), 1.0 / candidates),
        reward=(torch.rand(size, generator=gen) < 0.2).float(),
    )


def synthetic_tasks(config: PolicyConfig, users: int, support: int, query: int, items: int,
                    gen: torch.Generator) -> TaskBatch:
    def rows(n):
        return (torch.randint(0, items, (users, n), generator=gen), torch.randint(0, 5, (users, n), generator=gen),
                (torch.rand(users, n, generator=gen) < 0.2).float(), torch.ones(users, n, dtype=torch.bool))
    s_item, s_pos, s_rew, s_mask = rows(support)
    q_item, q_pos, q_rew, q_mask = rows(query)
    return TaskBatch(
        features=torch.randn(users, config.user_features, generator=gen),
        user_bucket=torch.randint(0, config.user_buckets, (users,), generator=gen),
        history=torch.zeros(users, config.text_dim),
        item_bucket=torch.randint(0, config.item_buckets, (items,), generator=gen),
        item_text=torch.nn.functional.normalize(torch.randn(items, config.text_dim, generator=gen), dim=-1),
        support_item=s_item, support_position=s_pos, support_reward=s_rew, support_mask=s_mask,
        query_item=q_item, query_position=q_pos, query_reward=q_rew, query_mask=q_mask,
    )
