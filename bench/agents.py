"""The policies the quality benchmark runs side by side, each learning only from its own feedback.

Every agent answers a round of requests (choose), then sees the outcome of what it
chose (learn), like a scorer serving one version while the learner trains on the
last round's feedback. ``OursAgent`` is the production learning loop (``models/loop.py``)
with the agent's defaults, served through ``ServingPolicy.decide`` as the scorer serves it.
``VowpalAgent`` is Vowpal Wabbit's contextual bandit (``--cb_explore_adf``) on the
same features.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.quality_stream import Stream
from bench.reservoir import Reservoir
from bench.served import ServedVersions
from models.agent import OURS, Agent, AgentConfig, Variant
from models.batch import Batch, TaskBatch
from models.item_evidence import ItemEvidence
from models.loop import ContinualLoop, LoopConfig
from models.policy import PolicyConfig
from models.serving import Recent
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


class SimRecords:
    """``models.loop.Experiences`` for the simulator's requests: a row per request (user, choice, propensity,
    reward, request number, then the candidates), each user's outcomes before it from the agent's memory."""

    USER, CHOICE, PROPENSITY, REWARD, REQUEST, CANDIDATES = 0, 1, 2, 3, 4, 5

    def __init__(self, sim: SimTensors, history: int, users: int) -> None:
        self.sim, self.history = sim, history
        self.hist_item = np.zeros((users, history), dtype=np.int64)
        self.hist_reward = np.zeros((users, history), dtype=np.float32)
        self.hist_len = np.zeros(users, dtype=np.int64)

    def request_key(self, row: np.ndarray) -> bytes:
        return b"request %d" % int(row[self.REQUEST])

    def is_decision(self, row: np.ndarray) -> bool:
        return True         # one slot, chosen among every candidate with a known propensity

    def is_outcome(self, row: np.ndarray) -> bool:
        return True

    def batch(self, rows) -> Batch:
        rows = np.stack(rows)
        c = self.CANDIDATES
        return self.sim.batch(rows[:, 0].astype(np.int64), rows[:, c:].astype(np.int64), rows[:, 1].astype(np.int64),
                              np.zeros(len(rows)), rows[:, 2], rows[:, 3])

    def remember(self, users: np.ndarray, shown: np.ndarray, reward: np.ndarray) -> None:
        """A round's outcomes join the users' histories (after the round is trained on, as the scorer's
        memory holds a request's own outcome only for the requests after it)."""
        history = self.history
        for user, item, r in zip(users, shown, reward):
            count = self.hist_len[user]
            # The newest ``history`` outcomes, oldest first (the scorer's UserMemory keeps the same).
            if count >= history:
                self.hist_item[user, :-1] = self.hist_item[user, 1:]
                self.hist_reward[user, :-1] = self.hist_reward[user, 1:]
            slot = min(count, history - 1)
            self.hist_item[user, slot], self.hist_reward[user, slot] = item, r
            self.hist_len[user] += 1

    def tasks(self, queries) -> TaskBatch | None:
        """Each request as a meta task: its user's outcomes before the round as support, its own as query."""
        rows = np.stack(queries)
        users = rows[:, self.USER].astype(np.int64)
        choice = rows[:, self.CHOICE].astype(np.int64)
        shown = rows[:, self.CANDIDATES:].astype(np.int64)[np.arange(len(rows)), choice]
        reward = rows[:, self.REWARD].astype(np.float32)
        history = self.history
        seen = np.minimum(self.hist_len[users], history)
        features, bucket, hist = self.sim.user_inputs(users)
        return TaskBatch(
            features=features, user_bucket=bucket, history=hist,
            item_bucket=self.sim.item_bucket, item_text=self.sim.item_text_t,
            support_item=torch.from_numpy(self.hist_item[users]),
            support_position=torch.zeros(len(users), history, dtype=torch.long),
            support_reward=torch.from_numpy(self.hist_reward[users]),
            support_mask=torch.from_numpy(np.arange(history)[None, :] < seen[:, None]),
            query_item=torch.from_numpy(shown[:, None]), query_position=torch.zeros(len(users), 1, dtype=torch.long),
            query_reward=torch.from_numpy(reward[:, None]), query_mask=torch.ones(len(users), 1, dtype=torch.bool))


class OursAgent:
    """The production loop (``models/loop.py``) on the simulator. Each round's outcomes go through
    ``ContinualLoop.learn_backlog`` (hold-out split, updates with replay and meta tasks, a gated version,
    consolidation), as the learner worker takes a backlog, and each version is served by
    ``ServingPolicy.decide`` from each user's last outcomes, as the scorer serves it. The bench brings only
    the data the stream would: a round's outcomes, a uniform replay reservoir (the replay store's tier,
    holding every outcome as the replay service does) and each user's outcomes before a request. Each item's
    bias is shifted by its recent residuals (``models/item_evidence.py``) as the scorer shifts it, unless
    ``item_evidence`` is off (the scorer's ``--no-item-evidence``)."""

    def __init__(self, stream: Stream, seed: int, item_text: np.ndarray, variant: Variant = OURS,
                 config: AgentConfig | None = None, replay_size: int = 50_000, item_evidence: bool = True,
                 name: str | None = None, **policy_overrides) -> None:
        self.name = name or variant.name
        world = stream.world
        model_config = PolicyConfig(**{"text_dim": item_text.shape[1], "user_features": world.users.features.shape[1],
                                       **policy_overrides})
        self.sim = SimTensors(world, item_text, model_config)
        agent = Agent(model_config, config, variant, seed=seed)
        self.adapts = agent.adapts
        self.history = agent.config.history
        self.rng = np.random.default_rng(seed)
        self.records = SimRecords(self.sim, self.history, len(world.users))
        self.replay: Reservoir[np.ndarray] = Reservoir(replay_size, self.rng)
        self.versions = ServedVersions()
        self.loop: ContinualLoop[np.ndarray] = ContinualLoop(agent, self.records, self.versions, self.replay,
                                                             LoopConfig(seed=seed))
        self.item_bucket = self.sim.item_bucket.numpy()
        self.evidence = ItemEvidence() if item_evidence else None
        self._expected = np.zeros(0)        # the served version's estimate of each chosen item

    # -- serving -------------------------------------------------------------------------------
    def choose(self, stream: Stream, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        users, cands = stream.users[rows], stream.candidates[rows]
        n = len(users)
        policy = self.versions.served
        if policy is None:         # no version yet: what a scorer serves before the first one
            self._expected = np.zeros(0)
            return self.rng.integers(0, cands.shape[1], size=n), np.full(n, 1.0 / cands.shape[1])
        features, memory = stream.world.users.features, self.records
        vectors, bias = policy.item_vectors(self.item_bucket, self.sim.item_text)
        choice, propensity = np.zeros(n, dtype=np.int64), np.zeros(n)
        self._expected = expected = np.zeros(n)
        at_top = np.zeros(1, dtype=np.int64)
        for i, (u, c) in enumerate(zip(users, cands)):
            user = policy.user_vector(features[u], int(self.sim.user_bucket[u]), self._no_history)
            shifted = bias[c] if self.evidence is None else bias[c] + self.evidence.offsets(c)
            recent = None
            seen = min(int(memory.hist_len[u]), self.history)
            if seen:
                items = memory.hist_item[u, :seen]
                recent = Recent(vectors[items], bias[items], np.zeros(seen, dtype=np.int64),
                                memory.hist_reward[u, :seen])
            decision = policy.decide(user, vectors[c], shifted, recent, 1, self.rng)
            choice[i], propensity[i] = decision.slate[0], decision.propensities[0]
            item = c[choice[i]]
            expected[i] = policy.estimates_at(user, vectors[item:item + 1], bias[item:item + 1], at_top, recent)[0]
        return choice, propensity

    @property
    def _no_history(self) -> np.ndarray:
        return np.zeros(self.sim.config.text_dim, dtype=np.float32)

    # -- learning --------------------------------------------------------------------------------
    def learn(self, stream: Stream, rows: slice, choice: np.ndarray, propensity: np.ndarray,
              reward: np.ndarray) -> None:
        users, cands = stream.users[rows], stream.candidates[rows]
        requests = np.arange(rows.start, rows.stop)
        round_rows = np.column_stack([users, choice, propensity, reward, requests, cands])
        self.replay.add(round_rows)         # the replay service stores the round as the learner reads it
        # A round stands for one publish interval of the worker: its outcomes are a backlog, then a version.
        self.loop.learn_backlog(round_rows)
        chosen = cands[np.arange(len(users)), choice]
        if self.evidence is not None and len(self._expected) == len(users):     # none before the first version
            self.evidence.record(chosen, reward - self._expected)
        self.records.remember(users, chosen, reward)

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
