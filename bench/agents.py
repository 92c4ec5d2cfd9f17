"""The policies the quality benchmark runs side by side, each learning only from its own feedback.

Every agent answers a round of requests (choose), then sees the outcome of what it
chose (learn), like a scorer serving one version while the learner trains on the
last round's feedback. ``OursAgent`` is the production learning core (``models/``:
the two-tower policy, ``Learner`` with its off-policy objective, meta-learned fast
weights and EWC + distillation), served as the scorer serves it (per-user fast
weights adapted from the user's last 20 outcomes, softmax exploration plus 5%
uniform; the temperature is 0.03 here, see ``OursAgent``). ``VowpalAgent`` is Vowpal Wabbit's contextual
bandit (``--cb_explore_adf``) on the same features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.quality_stream import Stream
from models.batch import TaskBatch
from models.learner import Learner, LearnerConfig
from models.meta import adapt
from models.policy import PolicyConfig, exploration_probs
from sim.logs import SimTensors


def sample_rows(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One column per row drawn from its distribution, and that column's probability."""
    cumulative = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cumulative[:, -1:]
    choice = np.minimum((cumulative < u).sum(axis=1), probs.shape[1] - 1)
    return choice, probs[np.arange(len(probs)), choice]


class RandomAgent:
    name = "random"

    def __init__(self, stream: Stream, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, stream: Stream, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        n, k = stream.candidates[rows].shape
        return self.rng.integers(0, k, size=n), np.full(n, 1.0 / k)

    def learn(self, stream, rows, choice, propensity, reward) -> None:
        pass


class OracleAgent:
    """Knows every candidate's true expected reward: the ceiling regret is measured against."""

    name = "oracle"

    def __init__(self, stream: Stream, seed: int) -> None:
        pass

    def choose(self, stream: Stream, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        choice = stream.expected[rows].argmax(axis=1)
        return choice, np.ones(len(choice))

    def learn(self, stream, rows, choice, propensity, reward) -> None:
        pass


class PopularityAgent:
    """Online counts: the item with the best smoothed reward per show so far, 5% uniform exploration."""

    name = "popularity"

    def __init__(self, stream: Stream, seed: int, epsilon: float = 0.05, prior: float = 0.2,
                 prior_weight: float = 5.0) -> None:
        n_items = len(stream.world.catalog)
        self.rng, self.epsilon = np.random.default_rng(seed), epsilon
        self.shows, self.rewards = np.zeros(n_items), np.zeros(n_items)
        self.prior, self.prior_weight = prior, prior_weight

    def choose(self, stream: Stream, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        cands = stream.candidates[rows]
        value = (self.rewards[cands] + self.prior * self.prior_weight) / (self.shows[cands] + self.prior_weight)
        k = cands.shape[1]
        probs = np.full(cands.shape, self.epsilon / k)
        probs[np.arange(len(cands)), value.argmax(axis=1)] += 1.0 - self.epsilon
        return sample_rows(probs, self.rng)

    def learn(self, stream, rows, choice, propensity, reward) -> None:
        items = stream.candidates[rows][np.arange(len(choice)), choice]
        np.add.at(self.shows, items, 1.0)
        np.add.at(self.rewards, items, reward)


@dataclass(frozen=True)
class OursVariant:
    name: str
    meta: bool = True
    anti_forgetting: bool = True
    #: Adapt per-user fast weights from the user's last outcomes at serve time (as the scorer does).
    serve_adaptation: bool = True


OURS = OursVariant("ours")
OURS_NO_META = OursVariant("ours_no_meta", meta=False, serve_adaptation=False)
OURS_NO_ANTI_FORGETTING = OursVariant("ours_no_anti_forgetting", anti_forgetting=False)


class OursAgent:
    history = 20
    #: Sharper than the scorer's default 0.1 for one slot: chosen on tuning streams the reported runs do not
    #: use (seed 0: 0.05 best of 0.05/0.1/0.2; seed 100: 0.03 best of 0.02/0.03/0.05). See BENCHMARKS.md.
    temperature, epsilon = 0.03, 0.05

    def __init__(self, stream: Stream, seed: int, item_text: np.ndarray, variant: OursVariant = OURS,
                 replay_size: int = 50_000, tasks: int = 16, consolidate_every: int = 20,
                 update_every: int = 32, temperature: float | None = None, **learner_overrides) -> None:
        torch.manual_seed(seed)
        self.name, self.variant = variant.name, variant
        self.sim = SimTensors(stream.world, item_text, PolicyConfig(text_dim=item_text.shape[1],
                                                                    user_features=stream.world.users.features.shape[1]))
        self.learner = Learner(self.sim.config, LearnerConfig(
            device="cpu", ewc_strength=100.0 if variant.anti_forgetting else 0.0,
            distill_strength=0.5 if variant.anti_forgetting else 0.0,
            **{"meta_weight": 1.0 if variant.meta else 0.0, **learner_overrides}))
        if temperature is not None:
            self.temperature = temperature
        self.rng = np.random.default_rng(seed)
        n_users = len(stream.world.users)
        self.hist_item = np.zeros((n_users, self.history), dtype=np.int64)
        self.hist_reward = np.zeros((n_users, self.history), dtype=np.float32)
        self.hist_len = np.zeros(n_users, dtype=np.int64)
        self.replay_size, self.n_tasks, self.consolidate_every = replay_size, tasks, consolidate_every
        self.update_every = update_every
        self.replay: list[np.ndarray] = []       # columns: user, choice, propensity, reward, then candidates
        self.replay_rows = 0
        self.recent: list = []
        self.rounds = 0

    # -- serving -------------------------------------------------------------------------------
    @torch.no_grad()
    def choose(self, stream: Stream, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        model = self.learner.model.eval()
        users, cands = stream.users[rows], torch.from_numpy(stream.candidates[rows])
        features, bucket, history = self.sim.user_inputs(users)
        user = model.user_vectors(features, bucket, history)
        vectors, bias = model.item_vectors(self.sim.item_bucket, self.sim.item_text_t)
        delta = None
        if self.variant.serve_adaptation:
            seen = torch.from_numpy(self.hist_item[users])
            mask = torch.arange(self.history)[None, :] < torch.from_numpy(np.minimum(self.hist_len[users],
                                                                                    self.history))[:, None]
            z = vectors[seen]
            base = torch.einsum("bd,bsd->bs", user, z) + bias[seen] + model.position_bias.weight[0, 0]
            delta = adapt(model.delta0, model.inner_log_lr.exp(), model.fast_features(z), base,
                          torch.from_numpy(self.hist_reward[users]), 3, mask)
            # No history: the meta-learned initialisation, exactly as the scorer serves a new user.
            delta = torch.where(mask.any(dim=1, keepdim=True), delta, model.delta0.expand_as(delta))
        scores = model.personal_scores(user, vectors[cands], bias[cands], delta)
        probs = exploration_probs(scores, self.temperature, self.epsilon).double().numpy()
        model.train()
        return sample_rows(probs, self.rng)

    # -- learning --------------------------------------------------------------------------------
    def learn(self, stream: Stream, rows: slice, choice: np.ndarray, propensity: np.ndarray,
              reward: np.ndarray) -> None:
        users, cands = stream.users[rows], stream.candidates[rows]
        n = len(users)
        fresh = np.column_stack([users, choice, propensity, reward, cands])
        self._remember_history(users, cands[np.arange(n), choice], reward)
        # As the learner worker does: an update as soon as a few fresh experiences are in (min_fresh 32),
        # each mixed with as many replayed ones.
        for chunk in np.array_split(fresh, max(1, n // self.update_every)):
            replayed = self._sample_replay(len(chunk))
            batch = self._batch(chunk if replayed is None else np.concatenate([chunk, replayed]))
            replay_batch = self._batch(replayed) if replayed is not None else None
            self.learner.update(batch, self._tasks() if self.variant.meta else None, replay_batch)
            self.recent = (self.recent + [batch])[-4:]
        self._remember_replay(fresh)
        self.rounds += 1
        if self.rounds % self.consolidate_every == 0:
            self.learner.consolidate(self.recent)      # what the learner does after each published version

    def _batch(self, rows: np.ndarray):
        return self.sim.batch(rows[:, 0].astype(np.int64), rows[:, 4:].astype(np.int64), rows[:, 1].astype(np.int64),
                              np.zeros(len(rows)), rows[:, 2], rows[:, 3])

    def _remember_history(self, users: np.ndarray, shown: np.ndarray, reward: np.ndarray) -> None:
        for user, item, r in zip(users, shown, reward):
            slot = self.hist_len[user] % self.history
            self.hist_item[user, slot], self.hist_reward[user, slot] = item, r
            self.hist_len[user] += 1

    def _remember_replay(self, fresh: np.ndarray) -> None:
        """A uniform reservoir over everything seen, as the replay store's reservoir tier keeps it."""
        for row in fresh:
            self.replay_rows += 1
            if len(self.replay) < self.replay_size:
                self.replay.append(row)
            else:
                j = int(self.rng.integers(0, self.replay_rows))
                if j < self.replay_size:
                    self.replay[j] = row

    def _sample_replay(self, n: int) -> np.ndarray | None:
        if not self.replay:
            return None
        index = self.rng.integers(0, len(self.replay), size=min(n, len(self.replay)))
        return np.stack([self.replay[i] for i in index])

    def _tasks(self, support: int = 5, query: int = 3) -> TaskBatch | None:
        """Users with enough history as meta-learning tasks: earlier outcomes to adapt on, later ones to judge."""
        need = support + query
        eligible = np.flatnonzero(self.hist_len >= need)
        if len(eligible) == 0:
            return None
        users = self.rng.choice(eligible, size=min(self.n_tasks, len(eligible)), replace=False)
        # The last ``need`` outcomes in time order (the ring buffer's newest slot is hist_len - 1).
        order = (self.hist_len[users, None] - need + np.arange(need)[None, :]) % self.history
        items = torch.from_numpy(np.take_along_axis(self.hist_item[users], order, axis=1))
        rewards = torch.from_numpy(np.take_along_axis(self.hist_reward[users], order, axis=1))
        return self.sim.task_batch(users, items, torch.zeros_like(items), rewards, support)


def vw_lines(world, item_text: np.ndarray) -> tuple[list[str], list[str]]:
    """Vowpal Wabbit text per user (shared namespace U: features and id) and per item (action namespace A:
    id and the text embedding), built once and reused by every example."""
    shared = [f"shared |U uid_{u} " + " ".join(f"f{j}:{v:.4f}" for j, v in enumerate(row))
              for u, row in zip(world.users.user_ids, world.users.features)]
    actions = [f"|A iid_{i} " + " ".join(f"t{j}:{v:.4f}" for j, v in enumerate(row))
               for i, row in zip(world.catalog.item_ids, item_text)]
    return shared, actions


def vw_labelled(example: list[str], action: int, reward: float, propensity: float) -> list[str]:
    """The example with the shown action labelled: VW minimises cost, so cost = -reward."""
    example = list(example)
    example[1 + action] = f"0:{-float(reward)}:{max(float(propensity), 1e-6)} {example[1 + action]}"
    return example


class VowpalAgent:
    """Vowpal Wabbit ``--cb_explore_adf``: the user in a shared namespace (features and id), each candidate
    as an action (id and the same text embedding ours reads), crossed (``-q UA``)."""

    def __init__(self, stream: Stream, seed: int, item_text: np.ndarray, exploration: str = "squarecb",
                 extra: str = "") -> None:
        from vowpalwabbit import Workspace

        self.name = f"vw_{exploration.split()[0].lstrip('-')}"
        self.args = f"--cb_explore_adf --{exploration} -q UA --quiet --random_seed {seed} {extra}".strip()
        self.vw = Workspace(self.args, enable_logging=False)
        self.rng = np.random.default_rng(seed)
        self.shared, self.actions = vw_lines(stream.world, item_text)

    def _example(self, user: int, cands: np.ndarray) -> list[str]:
        return [self.shared[user]] + [self.actions[i] for i in cands]

    def choose(self, stream: Stream, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        probs = np.array([self.vw.predict(self._example(u, c))
                          for u, c in zip(stream.users[rows], stream.candidates[rows])], dtype=np.float64)
        return sample_rows(probs, self.rng)

    def learn(self, stream, rows, choice, propensity, reward) -> None:
        for u, c, a, p, r in zip(stream.users[rows], stream.candidates[rows], choice, propensity, reward):
            self.vw.learn(vw_labelled(self._example(u, c), a, r, p))

    def close(self) -> None:
        self.vw.finish()
