"""The simulator's logs as ``models/`` tensors, and ground-truth evaluation of a policy.

Shared by the learning tests and the benchmarks: logged bandit feedback from a
behaviour policy, meta-learning tasks per user, and the true expected reward of
what a model would show (from the simulator's ground truth, never estimated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.batch import Batch, TaskBatch, hash_ids
from models.policy import PolicyConfig, TwoTowerPolicy
from sim.world import World


@dataclass
class SimTensors:
    world: World
    item_text: np.ndarray            # (n_items, text_dim) text embeddings of the catalogue
    config: PolicyConfig

    def __post_init__(self) -> None:
        self.item_bucket = torch.from_numpy(hash_ids(list(self.world.catalog.item_ids), self.config.item_buckets))
        self.user_bucket = hash_ids(list(self.world.users.user_ids), self.config.user_buckets)
        self.item_text_t = torch.from_numpy(np.ascontiguousarray(self.item_text, dtype=np.float32))

    def user_inputs(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = torch.from_numpy(self.world.users.features[users])
        bucket = torch.from_numpy(self.user_bucket[users])
        history = torch.zeros(len(users), self.config.text_dim)
        return features, bucket, history

    def batch(self, users, candidates, action, position, propensity, reward) -> Batch:
        features, bucket, history = self.user_inputs(users)
        candidates = torch.as_tensor(candidates, dtype=torch.long)
        return Batch(
            features=features, user_bucket=bucket, history=history,
            item_bucket=self.item_bucket, item_text=self.item_text_t,
            candidates=candidates, candidate_mask=torch.ones(candidates.shape, dtype=torch.bool),
            action=torch.as_tensor(action, dtype=torch.long),
            position=torch.as_tensor(position, dtype=torch.long),
            propensity=torch.as_tensor(propensity, dtype=torch.float32),
            reward=torch.as_tensor(reward, dtype=torch.float32),
        )

    def uniform_logs(self, n: int, k: int, users: np.ndarray | None = None) -> tuple[Batch, np.ndarray]:
        """n single-slot decisions by a uniform random policy over k candidates, and who made them."""
        world = self.world
        users = world.sample_users(n) if users is None else users
        candidates = world.candidates(len(users), k)
        action = world.rng.integers(0, k, size=len(users))
        shown = candidates[np.arange(len(users)), action][:, None]
        reward = world.feedback(users, shown).rewards(world.weights)[:, 0]
        batch = self.batch(users, candidates, action, np.zeros(len(users)), np.full(len(users), 1.0 / k), reward)
        return batch, users

    @torch.no_grad()
    def scores(self, model: TwoTowerPolicy, users: np.ndarray, candidates: np.ndarray,
               delta: torch.Tensor | None = None) -> np.ndarray:
        features, bucket, history = self.user_inputs(users)
        return model.score_candidates(features, bucket, history, self.item_bucket, self.item_text_t,
                                      torch.as_tensor(candidates, dtype=torch.long), delta).numpy()

    def true_value(self, users: np.ndarray, candidates: np.ndarray, choice: np.ndarray) -> float:
        """Mean true expected reward of showing candidates[i, choice[i]] at the top."""
        items = candidates[np.arange(len(users)), choice][:, None]
        return float(self.world.expected_item_reward(users, items).mean())

    def tasks(self, users: np.ndarray, n_support: int, n_query: int, k: int, slate_size: int = 1) -> TaskBatch:
        """Per user: n_support + n_query requests answered by a uniform random slate, split in time order.

        Each request contributes ``slate_size`` experiences (one per position), so the
        support set of ``n_support`` interactions holds ``n_support * slate_size`` rows.
        """
        n = n_support + n_query
        repeated = np.repeat(users, n)
        world = self.world
        slates = world.candidates(len(repeated), k)[:, :slate_size]
        reward = world.feedback(repeated, slates).rewards(world.weights)
        shape = (len(users), n * slate_size)
        shown = torch.from_numpy(slates.reshape(shape))
        reward = torch.from_numpy(reward.reshape(shape).astype(np.float32))
        position = torch.from_numpy(np.tile(np.arange(slate_size), (len(users), n)))
        return self.task_batch(users, shown, position, reward, n_support * slate_size)

    def task_batch(self, users: np.ndarray, items: torch.Tensor, positions: torch.Tensor, rewards: torch.Tensor,
                   n_support: int) -> TaskBatch:
        """Per user, (T, n) outcomes in time order: the first ``n_support`` to adapt on, the rest to judge."""
        features, bucket, history = self.user_inputs(users)
        ones = torch.ones(items.shape, dtype=torch.bool)
        return TaskBatch(
            features=features, user_bucket=bucket, history=history,
            item_bucket=self.item_bucket, item_text=self.item_text_t,
            support_item=items[:, :n_support], support_position=positions[:, :n_support],
            support_reward=rewards[:, :n_support], support_mask=ones[:, :n_support],
            query_item=items[:, n_support:], query_position=positions[:, n_support:],
            query_reward=rewards[:, n_support:], query_mask=ones[:, n_support:],
        )
