"""Real data, period by period: MovieLens ratings as a stream, each period judged before it is learned.

    recsys-stream bench movielens --data DIR [--periods 8] [--json OUT.json] [--policies ...]

The protocol of the incremental-update papers (ASMG, RecSys 2021; SML, SIGIR 2020):
ratings in time order, rating >= 4 a positive (a click), anything lower shown but not
clicked; the stream is cut into periods of equal size (derived from the file, so the
same command runs on any ``ratings.csv`` of this format). Period 0 only trains. For
every later period each policy first predicts the period (AUC, log loss, per-user
GAUC; AUC on new users' first ratings and on items first rated in the period), then
trains on it. 10% of each period's ratings are held out of training: at the end every
policy re-predicts the earlier periods' held-out ratings, and backward transfer (BWT,
as continual-learning papers report it) is the mean change of that AUC since the
period was learned (negative: forgotten).

Item text is title + genres through the packaged MiniLM, so a movie first rated later
is scored from its words. The rows:

- ``ours``: the production learning loop (``models/loop.py``) with its defaults. Each
  period is a backlog it learns as the learner worker backfills one
  (``ContinualLoop.learn_backlog``: the hold-out split by request, turns of
  ``max_turn`` ratings split into updates, each with as many replayed ratings from a
  uniform reservoir and fresh ratings as meta tasks, a version whenever one is due and
  at the end of the period, each consolidated), and served through
  ``ServingPolicy.estimates`` with each user's last ratings before the one predicted
  (the scorer's memory, which follows outcomes in real time, not per period); each movie's bias is shifted
  by its residuals so far against the served version (``models/item_evidence.py``, the scorer's item
  evidence, which also follows outcomes as they come).
- ``ours_no_meta``, ``ours_no_anti_forgetting``: the agent's ablations; ``ours_no_item_evidence``: ours
  served without the item evidence (the scorer's ``--no-item-evidence``); ``ours_changepoint`` (not run by
  default): ours with each user's posterior taken from where their current tastes began
  (``models/changepoint.py``); ``full_retrain_adapted_changepoint`` the same for that row.
- ``fine_tune``: the same model trained on each period alone (no replay, no meta, no
  regularisers): plain incremental fine-tuning.
- ``full_retrain``: a new model each period, trained from scratch on all ratings so far
  (the same loop without meta step, replay or regularisers; two shuffled passes).
  ``full_retrain_adapted``: the same with the meta step, served adapted to each user's
  last ratings as ``ours`` is, so the table shows what incremental training adds.
- ``vw``, ``river_fm``, ``lenskit_mf``, ``lenskit_mf_fold_in``: library baselines
  (``bench/library_baselines.py``).
- ``sasrec``: a self-attentive sequence model over each user's last ratings, refit each period
  (``bench/sequence_baseline.py``).
- ``popularity``: each item's smoothed share of positive ratings so far.
"""

from __future__ import annotations

import csv
import inspect
import math
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.library_baselines import LensKitMF, OnlineRows, RiverFM, VowpalPolicy
from bench.machine import result
from bench.reservoir import Reservoir
from bench.sequence_baseline import SelfAttentive
from bench.served import ServedVersions
from models.agent import OURS, OURS_CHANGEPOINT, OURS_NO_ANTI_FORGETTING, OURS_NO_META, Agent, AgentConfig, Variant
from models.batch import Batch, TaskBatch, hash_ids
from models.item_evidence import ItemEvidence
from models.loop import ContinualLoop, LoopConfig
from models.policy import PolicyConfig
from models.ranking import auc, gauc
from models.serving import Recent

POLICIES = ("ours", "ours_no_meta", "ours_no_anti_forgetting", "ours_no_item_evidence", "fine_tune", "full_retrain",
            "full_retrain_adapted", "vw", "river_fm", "lenskit_mf", "lenskit_mf_fold_in", "sasrec", "popularity")
#: Also run by name (``--policies``), not by default.
OPTIONAL_POLICIES = ("ours_changepoint", "full_retrain_adapted_changepoint")
#: Baselines whose hyper-parameters ``bench.tune_movielens`` searches, by the constructor that takes them.
_TUNABLE_CONSTRUCTORS = {"vw": VowpalPolicy, "river_fm": RiverFM, "lenskit_mf": LensKitMF,
                         "lenskit_mf_fold_in": LensKitMF, "sasrec": SelfAttentive}
TUNABLE = tuple(_TUNABLE_CONSTRUCTORS)
#: Settings ``bench.tune_movielens`` chose on the tuning half where they differ from the constructor's
#: defaults (``docs/benchmarks/notes/2026-12-07-library-tuning.md``).
TUNED: dict[str, dict[str, Any]] = {"vw": {"power_t": 0.25}, "river_fm": {"lr": 0.1},
                                    "lenskit_mf_fold_in": {"features": 10, "regularization": 1.0}}
#: A new user's first ratings, the ones "AUC on new users" is measured on.
NEW_USER_RATINGS = 10
HOLDOUT_SHARE = 0.1


@dataclass
class Ratings:
    user: np.ndarray            # (N,) user index, in time order
    item: np.ndarray            # (N,) item index
    label: np.ndarray           # (N,) 1.0 for rating >= 4
    rating: np.ndarray          # (N,) the rating itself (0.5-5 stars)
    ts: np.ndarray              # (N,) epoch seconds
    user_ids: list[str]
    item_ids: list[str]
    item_texts: list[str]
    previous: np.ndarray        # (N, H) the user's previous ratings (row indices, -1 padding), oldest first
    nth: np.ndarray             # (N,) how many ratings the user made before this one

    def __len__(self) -> int:
        return len(self.user)


def load(data: Path, history: int = 20, limit: int | None = None) -> Ratings:
    """``ratings.csv`` and ``movies.csv`` from a MovieLens folder, ratings in time order."""
    ratings_path, movies_path = data / "ratings.csv", data / "movies.csv"
    for path in (ratings_path, movies_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: --data must be a MovieLens folder with ratings.csv "
                                    "and movies.csv (userId,movieId,rating,timestamp / movieId,title,genres)")
    titles: dict[str, tuple[str, str]] = {}
    with movies_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"movieId", "title", "genres"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{movies_path}: expected columns movieId,title,genres, found {reader.fieldnames}")
        for row in reader:
            titles[row["movieId"]] = (row["title"], row["genres"])
    rows = []
    with ratings_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"userId", "movieId", "rating", "timestamp"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{ratings_path}: expected columns userId,movieId,rating,timestamp, "
                             f"found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((int(row["timestamp"]), row["userId"], row["movieId"], float(row["rating"])))
            except (TypeError, ValueError):
                raise ValueError(f"{ratings_path}:{line}: not a rating: {row}") from None
    if not rows:
        raise ValueError(f"{ratings_path} holds no ratings")
    rows.sort()
    if limit is not None:
        rows = rows[:limit]
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    n = len(rows)
    user, item = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    label, ts = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int64)
    rating = np.zeros(n, dtype=np.float32)
    previous = np.full((n, history), -1, dtype=np.int64)
    nth = np.zeros(n, dtype=np.int64)
    past: dict[int, deque[int]] = {}
    for i, (t, u, m, r) in enumerate(rows):
        user[i], item[i] = users.setdefault(u, len(users)), items.setdefault(m, len(items))
        label[i], rating[i], ts[i] = float(r >= 4.0), r, t
        seen = past.setdefault(int(user[i]), deque(maxlen=history))
        previous[i, history - len(seen):] = list(seen)
        nth[i] = nth[seen[-1]] + 1 if seen else 0
        seen.append(i)
    texts = []
    for movie in items:
        title, genres = titles.get(movie, (f"movie {movie}", ""))
        genres = "" if genres == "(no genres listed)" else genres.replace("|", ", ")
        texts.append(f"{title}. Genres: {genres}." if genres else title)
    return Ratings(user, item, label, rating, ts, list(users), list(items), texts, previous, nth)


def encode(texts: list[str], say: Callable[[str], None]) -> np.ndarray:
    from models.encoders import TextEncoder

    say(f"encoding {len(texts):,} movie texts with the packaged MiniLM")
    return TextEncoder().encode(texts)


# -- metrics -------------------------------------------------------------------------------------
def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-4, 1 - 1e-4)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


# -- policies ------------------------------------------------------------------------------------
class RatingRecords:
    """``models.loop.Experiences`` for ratings: a record is a rating's row, a one-candidate decision (the rated
    movie was shown, the label is its click), and a user's earlier ratings are the meta tasks' support."""

    def __init__(self, data: Ratings, text: torch.Tensor, model_config: PolicyConfig) -> None:
        self.data, self.text, self.model_config = data, text, model_config
        self.item_bucket = hash_ids(data.item_ids, model_config.item_buckets)
        self.user_bucket = hash_ids(data.user_ids, model_config.user_buckets)

    def request_key(self, row: int) -> bytes:
        d = self.data
        return f"{d.user_ids[d.user[row]]}@{d.ts[row]}:{d.item_ids[d.item[row]]}".encode()

    def is_decision(self, row: int) -> bool:
        return False        # a rating names no choice among candidates: nothing for the gate to judge

    def is_outcome(self, row: int) -> bool:
        return True

    def batch(self, rows) -> Batch:
        rows = np.asarray(rows, dtype=np.int64)
        items, index = np.unique(self.data.item[rows], return_inverse=True)
        n = len(rows)
        return Batch(
            features=torch.zeros(n, 0), user_bucket=torch.from_numpy(self.user_bucket[self.data.user[rows]]),
            history=torch.zeros(n, self.model_config.text_dim),
            item_bucket=torch.from_numpy(self.item_bucket[items]), item_text=self.text[items],
            candidates=torch.from_numpy(index.reshape(n, 1)), candidate_mask=torch.ones(n, 1, dtype=torch.bool),
            action=torch.zeros(n, dtype=torch.long), position=torch.zeros(n, dtype=torch.long),
            propensity=torch.ones(n), reward=torch.from_numpy(self.data.label[rows]))

    def tasks(self, queries) -> TaskBatch | None:
        """The user's previous ratings adapt, the rating itself is predicted."""
        picked = np.asarray(queries, dtype=np.int64)
        previous = self.data.previous[picked]
        mask = previous >= 0
        support = np.where(mask, previous, picked[:, None])
        every = np.concatenate([support.ravel(), picked])
        items, index = np.unique(self.data.item[every], return_inverse=True)
        n, width = previous.shape
        support_index, query_index = index[:n * width].reshape(n, width), index[n * width:].reshape(n, 1)
        return TaskBatch(
            features=torch.zeros(n, 0), user_bucket=torch.from_numpy(self.user_bucket[self.data.user[picked]]),
            history=torch.zeros(n, self.model_config.text_dim),
            item_bucket=torch.from_numpy(self.item_bucket[items]), item_text=self.text[items],
            support_item=torch.from_numpy(support_index), support_position=torch.zeros(n, width, dtype=torch.long),
            support_reward=torch.from_numpy(np.where(mask, self.data.label[support], 0.0).astype(np.float32)),
            support_mask=torch.from_numpy(mask),
            query_item=torch.from_numpy(query_index), query_position=torch.zeros(n, 1, dtype=torch.long),
            query_reward=torch.from_numpy(self.data.label[picked][:, None]), query_mask=torch.ones(n, 1, dtype=torch.bool))


class OursPolicy:
    """The production loop (``models/loop.py``) on ratings: each period is a backlog the loop learns as the
    worker backfills one (``ContinualLoop.learn_backlog``), with a uniform replay reservoir that holds the
    period before it is learned (``replay`` stores a backlog first), and each version is served through
    ``ServingPolicy.estimates`` with the user's ratings before the one predicted (the scorer's memory) and
    each movie's bias shifted by ``evidence`` (None: served without item evidence)."""

    def __init__(self, name: str, data: Ratings, text: np.ndarray, variant: Variant, seed: int,
                 config: AgentConfig | None = None, loop: LoopConfig | None = None, replay_size: int = 50_000,
                 evidence: ItemEvidence | None = None) -> None:
        self.name, self.data, self.evidence = name, data, evidence
        self.model_config = PolicyConfig(user_features=0, text_dim=text.shape[1])
        agent = Agent(self.model_config, config, variant, seed=seed)
        self.adapts = agent.adapts
        self.text_np = np.ascontiguousarray(text, dtype=np.float32)
        self.records = RatingRecords(data, torch.from_numpy(self.text_np), self.model_config)
        self.item_bucket, self.user_bucket = self.records.item_bucket, self.records.user_bucket
        self.reservoir: Reservoir[int] = Reservoir(replay_size, np.random.default_rng(seed))
        self.versions = ServedVersions()
        self.loop: ContinualLoop[int] = ContinualLoop(agent, self.records, self.versions, self.reservoir,
                                                      loop or LoopConfig(seed=seed))

    def train(self, rows: np.ndarray) -> None:
        self.reservoir.add(int(row) for row in rows)
        self.loop.learn_backlog(rows.tolist())

    def serve_period(self, rows: np.ndarray) -> np.ndarray:
        """``predict``, with each rating's outcome joining the item evidence once it is predicted, as the
        scorer's follows outcomes."""
        return self.predict(rows, observe=True)

    def predict(self, rows: np.ndarray, observe: bool = False) -> np.ndarray:
        """Each rating's estimated click probability from the served version, the user's ratings before
        it (the scorer's memory) and the item evidence so far."""
        policy, data, evidence = self.versions.served, self.data, self.evidence
        vectors, bias = policy.item_vectors(self.item_bucket, self.text_np)
        no_features, no_history = np.zeros(0, dtype=np.float32), np.zeros(self.model_config.text_dim, dtype=np.float32)
        out = np.zeros(len(rows))
        for i, row in enumerate(rows):
            user = policy.user_vector(no_features, int(self.user_bucket[data.user[row]]), no_history)
            previous = data.previous[row][data.previous[row] >= 0]
            recent = None
            if len(previous) and self.adapts:
                seen = data.item[previous]
                recent = Recent(vectors[seen], bias[seen], np.zeros(len(seen), dtype=np.int64), data.label[previous])
            item = data.item[row]
            # The estimate is linear in the bias: the evidence's shift adds to it, and the residual the evidence
            # records is against the unshifted estimate (``ServingPolicy.estimates_at`` at the top position).
            expected = policy.estimates(user, vectors[item:item + 1], bias[item:item + 1], recent)[0]
            out[i] = expected
            if evidence is not None:
                out[i] += evidence.offsets(np.array([item]))[0]
                if observe:
                    evidence.record(np.array([item]), np.array([data.label[row] - expected]))
        return np.clip(out, 0.0, 1.0)


class FullRetrain:
    """A new model every period, trained from scratch on every rating so far (the same loop, from nothing,
    ``epochs`` passes over everything in a shuffled order; nothing held out, since ratings give the gate
    nothing to judge), with no replay or regulariser. ``adapted``: with the meta step too, so the version is
    served adapted to each user's last ratings as ``ours`` is: what incremental training adds beyond that."""

    def __init__(self, data: Ratings, text: np.ndarray, seed: int, adapted: bool = False, epochs: int = 2,
                 batch_size: int = 256, change_hazard: float | None = None) -> None:
        self.name = ("full_retrain_adapted" if adapted else "full_retrain") + ("_changepoint" if change_hazard else "")
        self.variant = Variant(self.name, meta=adapted, anti_forgetting=False, replay=False, change_hazard=change_hazard)
        self.data, self.text, self.seed, self.epochs = data, text, seed, epochs
        self.config = AgentConfig(update_size=batch_size, max_turn=8 * batch_size, publish_every_updates=2**31)
        self.trained: list[np.ndarray] = []
        self.inner: OursPolicy | None = None
        self.evidence = ItemEvidence()      # served as ours is, across its per-period models

    def train(self, rows: np.ndarray) -> None:
        self.trained.append(rows)
        every = np.concatenate(self.trained)
        inner = OursPolicy(self.name, self.data, self.text, self.variant, self.seed, self.config,
                           LoopConfig(holdout_share=0.0, seed=self.seed), evidence=self.evidence)
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            inner.loop.learn_backlog(rng.permutation(every).tolist())
        self.inner = inner

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.inner.predict(rows)

    def serve_period(self, rows: np.ndarray) -> np.ndarray:
        return self.inner.serve_period(rows)


class PopularityPolicy:
    def __init__(self, data: Ratings, prior_weight: float = 5.0) -> None:
        self.name, self.data, self.prior_weight = "popularity", data, prior_weight
        n = len(data.item_ids)
        self.shown, self.liked = np.zeros(n), np.zeros(n)

    def train(self, rows: np.ndarray) -> None:
        np.add.at(self.shown, self.data.item[rows], 1.0)
        np.add.at(self.liked, self.data.item[rows], self.data.label[rows])

    def predict(self, rows: np.ndarray) -> np.ndarray:
        prior = self.liked.sum() / max(1.0, self.shown.sum())
        items = self.data.item[rows]
        return (self.liked[items] + prior * self.prior_weight) / (self.shown[items] + self.prior_weight)


def settings_of(name: str) -> list[str]:
    """The hyper-parameters a tunable row's constructor takes."""
    if name not in TUNABLE:
        raise ValueError(f"{name!r} takes no settings; rows that do: {', '.join(TUNABLE)}")
    fixed = {"self", "data", "text", "seed", "fold_in"}
    return [p for p in inspect.signature(_TUNABLE_CONSTRUCTORS[name].__init__).parameters if p not in fixed]


def check_settings(name: str, settings: Iterable[str]) -> None:
    """Refuse a setting the row's constructor does not take, before any time is spent on the row."""
    unknown = set(settings) - set(settings_of(name))
    if unknown:
        raise ValueError(f"{name} has no setting {', '.join(sorted(unknown))}; it takes {', '.join(settings_of(name))}")


def make_policy(name: str, data: Ratings, text: np.ndarray, seed: int, settings: dict[str, Any] | None = None):
    """``settings``: keyword arguments for a baseline's constructor (``bench.tune_movielens`` tries them);
    none given, a tuned row takes its ``TUNED`` settings."""
    settings = TUNED.get(name, {}) if settings is None else settings
    if settings:
        check_settings(name, settings)
    variants = {"ours": OURS, "ours_no_meta": OURS_NO_META, "ours_no_anti_forgetting": OURS_NO_ANTI_FORGETTING,
                "ours_no_item_evidence": OURS, "ours_changepoint": OURS_CHANGEPOINT,
                "fine_tune": Variant("fine_tune", meta=False, anti_forgetting=False, replay=False)}
    if name in variants:
        evidence = None if name == "ours_no_item_evidence" else ItemEvidence()
        return OursPolicy(name, data, text, variants[name], seed, evidence=evidence)
    if name in ("full_retrain", "full_retrain_adapted"):
        return FullRetrain(data, text, seed, adapted=name == "full_retrain_adapted")
    if name == "full_retrain_adapted_changepoint":
        return FullRetrain(data, text, seed, adapted=True, change_hazard=OURS_CHANGEPOINT.change_hazard)
    if name == "vw":
        return VowpalPolicy(data, text, seed, **settings)
    if name == "river_fm":
        return RiverFM(data, seed, **settings)
    if name in ("lenskit_mf", "lenskit_mf_fold_in"):
        return LensKitMF(data, seed, fold_in=name == "lenskit_mf_fold_in", **settings)
    if name == "sasrec":
        return SelfAttentive(data, text, seed, **settings)
    if name == "popularity":
        return PopularityPolicy(data)
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES + OPTIONAL_POLICIES)}")


# -- the protocol --------------------------------------------------------------------------------
def split(data: Ratings, periods: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training rows, held-out rows) of each period: equal-count periods in time order; a rating is held
    out by a hash of (user, item), so the choice does not depend on the seed or the policy."""
    if periods < 3:
        raise ValueError("--periods must be at least 3 (one to start from, two to judge)")
    if len(data) < periods * 50:
        raise ValueError(f"{len(data)} ratings are too few for {periods} periods")
    bounds = np.linspace(0, len(data), periods + 1).astype(int)
    held = np.fromiter((zlib.crc32(f"{data.user_ids[u]}:{data.item_ids[m]}".encode()) % 1000 < HOLDOUT_SHARE * 1000
                        for u, m in zip(data.user, data.item)), dtype=bool, count=len(data))
    train, holdout = [], []
    for p in range(periods):
        rows = np.arange(bounds[p], bounds[p + 1])
        train.append(rows[~held[rows]])
        holdout.append(rows[held[rows]])
    return train, holdout


def period_metrics(data: Ratings, rows: np.ndarray, scores: np.ndarray, new_users: np.ndarray,
                   new_items: np.ndarray) -> dict[str, float]:
    labels = data.label[rows]
    return {
        "auc": auc(labels, scores), "log_loss": log_loss(labels, scores),
        "gauc": gauc(data.user[rows], labels, scores),
        "auc_new_users": auc(labels[new_users], scores[new_users]) if new_users.any() else float("nan"),
        "auc_new_items": auc(labels[new_items], scores[new_items]) if new_items.any() else float("nan"),
        "ratings": float(len(rows)), "new_user_ratings": float(new_users.sum()), "new_item_ratings": float(new_items.sum()),
    }


def run_policy(name: str, data: Ratings, text: np.ndarray, train: list[np.ndarray], holdout: list[np.ndarray],
               seed: int, say: Callable[[str], None], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    policy = make_policy(name, data, text, seed, settings)
    first_period = np.zeros(len(data.item_ids), dtype=np.int64) - 1
    first_user = np.zeros(len(data.user_ids), dtype=np.int64) - 1
    per_period: list[dict[str, float]] = []
    seconds: list[float] = []
    after_training: list[float] = []       # AUC on each period's held-out ratings right after learning it
    for p, (rows, held) in enumerate(zip(train, holdout)):
        everything = np.sort(np.concatenate([rows, held]))
        for r in everything:
            if first_period[data.item[r]] < 0:
                first_period[data.item[r]] = p
            if first_user[data.user[r]] < 0:
                first_user[data.user[r]] = p
        learned_before = getattr(policy, "learn_seconds", 0.0)
        if p > 0:
            new_users = (first_user[data.user[everything]] == p) & (data.nth[everything] < NEW_USER_RATINGS)
            new_items = first_period[data.item[everything]] == p
            started = time.perf_counter()
            if isinstance(policy, OnlineRows):       # it learns each rating after predicting it
                scores = policy.predict_then_learn(everything, np.isin(everything, rows))
            else:       # the period as served: each outcome joins the serving side's evidence once predicted
                scores = getattr(policy, "serve_period", policy.predict)(everything)
            predict_seconds = time.perf_counter() - started
            metrics = period_metrics(data, everything, scores, new_users, new_items)
            if not getattr(policy, "probabilities", True):      # a predicted rating: log loss means nothing
                metrics["log_loss"] = float("nan")
            metrics["predict_seconds"] = predict_seconds
            per_period.append(metrics)
        started = time.perf_counter()
        if isinstance(policy, OnlineRows):
            if p == 0:
                policy.train(rows)
            seconds.append(policy.learn_seconds - learned_before)     # it learned the period while predicting it
        else:
            policy.train(rows)
            seconds.append(time.perf_counter() - started)
        after_training.append(auc(data.label[held], policy.predict(held)) if len(held) else float("nan"))
        if p > 0:
            m = per_period[-1]
            say(f"  {name:<24} period {p}/{len(train) - 1}: AUC {m['auc']:.4f}  GAUC {m['gauc']:.4f}  "
                f"new users {m['auc_new_users']:.4f}  new items {m['auc_new_items']:.4f}  "
                f"trained in {seconds[-1]:.1f}s")
    final = [auc(data.label[held], policy.predict(held)) if len(held) else float("nan") for held in holdout]
    bwt = [f - a for f, a in zip(final[:-1], after_training[:-1])]
    if isinstance(policy, OnlineRows):
        policy.close()
    return {"per_period": per_period, "train_seconds": seconds, "heldout_auc_after_training": after_training,
            "heldout_auc_final": final, "bwt_per_period": bwt}


def summarise(run: dict[str, Any]) -> dict[str, float]:
    periods = run["per_period"]

    def mean(key: str) -> float:
        values = [p[key] for p in periods if not math.isnan(p[key])]
        return float(np.mean(values)) if values else float("nan")

    bwt = [b for b in run["bwt_per_period"] if not math.isnan(b)]
    return {"mean_auc": mean("auc"), "mean_gauc": mean("gauc"), "mean_log_loss": mean("log_loss"),
            "mean_auc_new_users": mean("auc_new_users"), "mean_auc_new_items": mean("auc_new_items"),
            "bwt": float(np.mean(bwt)) if bwt else float("nan"),
            "train_seconds_per_period": float(np.mean(run["train_seconds"][1:])),
            "train_seconds_last_period": float(run["train_seconds"][-1])}


def run_movielens(data_dir: Path, periods: int = 8, policies: tuple[str, ...] = POLICIES, seed: int = 1,
                  limit: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda line: None)
    unknown = set(policies) - set(POLICIES + OPTIONAL_POLICIES)
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}; choose from {', '.join(POLICIES + OPTIONAL_POLICIES)}")
    history = AgentConfig().history
    data = load(data_dir, history, limit)
    say(f"{len(data):,} ratings by {len(data.user_ids):,} users of {len(data.item_ids):,} movies, "
        f"{int(data.label.sum()):,} positive (rating >= 4); {periods} periods")
    text = encode(data.item_texts, say)
    train, holdout = split(data, periods, seed)
    runs, summary = {}, {}
    for name in policies:
        say(f"{name}:")
        started = time.perf_counter()
        runs[name] = run_policy(name, data, text, train, holdout, seed, say)
        summary[name] = summarise(runs[name])
        s = summary[name]
        say(f"  {name:<24} mean AUC {s['mean_auc']:.4f}  new users {s['mean_auc_new_users']:.4f}  "
            f"new items {s['mean_auc_new_items']:.4f}  BWT {s['bwt']:+.4f}  "
            f"{s['train_seconds_per_period']:.1f}s/period ({time.perf_counter() - started:.0f}s in all)")
    params = {"data": str(data_dir), "ratings": len(data), "users": len(data.user_ids), "movies": len(data.item_ids),
              "periods": periods, "holdout_share": HOLDOUT_SHARE, "seed": seed, "policies": list(policies),
              "positive": "rating >= 4", "new_user_ratings": NEW_USER_RATINGS,
              "first_ts": int(data.ts[0]), "last_ts": int(data.ts[-1]),
              "tuned": {name: TUNED[name] for name in policies if name in TUNED}}
    return result("movielens", {"by_policy": summary, "paired": paired_periods(runs), "runs": runs}, params)


#: Per-period figures the paired comparison reads.
PAIRED_KEYS = ("auc", "gauc", "auc_new_users", "auc_new_items")


def paired_periods(runs: dict[str, Any], first: str = "ours") -> dict[str, dict[str, dict[str, float]]]:
    """``first`` minus every other row, paired per period (the same ratings judged): mean, standard error,
    z and the periods ``first`` was ahead in, per figure."""
    if first not in runs:
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, run in runs.items():
        if name == first:
            continue
        pair = out[f"{first} - {name}"] = {}
        for key in PAIRED_KEYS:
            diff = np.array([a[key] - b[key] for a, b in zip(runs[first]["per_period"], run["per_period"])])
            diff = diff[np.isfinite(diff)]
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            mean = float(diff.mean()) if len(diff) else float("nan")
            pair[key] = {"mean": mean, "se": se, "z": mean / se if se > 0 else float("nan"),
                         "ahead": int((diff > 0).sum()), "periods": int(len(diff))}
    return out


def paired_table(report: dict[str, Any]) -> str:
    lines = [f"{'paired per period':<36}" + "".join(f"{k:>26}" for k in PAIRED_KEYS)]
    for pair, figures in report["metrics"].get("paired", {}).items():
        cells = "".join(f"{format(m['mean'], '+.4f')} ±{m['se']:.4f} {m['ahead']}/{m['periods']}".rjust(26)
                        for m in (figures[k] for k in PAIRED_KEYS))
        lines.append(f"{pair:<36}" + cells)
    return "\n".join(lines)


def summary_table(report: dict[str, Any]) -> str:
    keys = [("mean_auc", "AUC", ".4f"), ("mean_gauc", "GAUC", ".4f"), ("mean_log_loss", "log loss", ".4f"),
            ("mean_auc_new_users", "new users", ".4f"), ("mean_auc_new_items", "new items", ".4f"),
            ("bwt", "BWT", "+.4f"), ("train_seconds_per_period", "s/period", ".1f")]
    lines = [f"{'policy':<26}" + "".join(f"{label:>12}" for _, label, _ in keys)]
    for name, m in report["metrics"]["by_policy"].items():
        lines.append(f"{name:<26}" + "".join(f"{format(m[k], fmt):>12}" for k, _, fmt in keys))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.cli import movielens_command

    return movielens_command.main(args=argv, prog_name="python -m bench.movielens", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
