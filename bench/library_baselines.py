"""Rows of ``bench movielens`` from libraries a recommender team would reach for instead of ours.

- ``lenskit_mf``: LensKit's biased matrix factorisation (alternating least squares on the
  explicit ratings), refit on every rating so far at each period, as a nightly batch job
  would be. ``lenskit_mf_fold_in``: the same model, but each prediction folds in the
  user's ratings before it (LensKit's own new-user embedding, a least-squares solve
  against the item factors): the library's way to use a user's latest ratings at
  prediction time, as ours adapts its per-user head to a user's last outcomes.
- ``vw``: Vowpal Wabbit logistic regression on the user id, the movie id and its text
  embedding, user x movie crossed (``-q ui``), online: it predicts each rating, then
  learns it.
- ``river_fm``: river's factorisation machine for binary targets (the user, the movie
  and its genres as features), online in the same way.

``bench.tune_movielens`` searched their settings on the tuning half (the first 35,000 ratings); where the
search found better than the defaults, ``bench.movielens.TUNED`` holds it. They are optional (``pip install
'recsys-stream[bench]'``), never runtime dependencies.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bench.movielens import Ratings

#: How many of a user's previous ratings a fold-in reads: the history ours adapts on.
FOLD_IN = 20


def _require(module: str, row: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module.split('.')[0]} is not installed: pip install 'recsys-stream[bench]', or leave "
                          f"{row} out with --policies") from None


class LensKitMF:
    #: It predicts ratings, not click probabilities: AUC reads their order, log loss is not reported.
    probabilities = False

    def __init__(self, data: Ratings, seed: int, fold_in: bool, features: int = 50, regularization: float = 0.1,
                 epochs: int = 10, damping: float = 5.0) -> None:
        _require("lenskit.als", "lenskit_mf")
        self.name = "lenskit_mf_fold_in" if fold_in else "lenskit_mf"
        self.data, self.seed, self.fold_in = data, seed, fold_in
        self.settings = {"embedding_size": features, "regularization": regularization, "epochs": epochs,
                         "damping": damping}
        self.trained: list[np.ndarray] = []
        self.scorer = None

    def train(self, rows: np.ndarray) -> None:
        import pandas as pd
        from lenskit.als import BiasedMFScorer
        from lenskit.data import from_interactions_df
        from lenskit.training import TrainingOptions

        self.trained.append(rows)
        every = np.concatenate(self.trained)
        d = self.data
        frame = pd.DataFrame({"user_id": np.asarray(d.user_ids)[d.user[every]],
                              "item_id": np.asarray(d.item_ids)[d.item[every]], "rating": d.rating[every]})
        # LensKit takes one rating per user and movie: a movie rated again counts with its latest rating.
        frame = frame.drop_duplicates(["user_id", "item_id"], keep="last")
        scorer = BiasedMFScorer(**self.settings)
        scorer.train(from_interactions_df(frame, rating_col="rating"), TrainingOptions(rng=self.seed))
        self.scorer = scorer

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Predicted ratings (AUC reads only their order); an unknown user or movie gets the biases it has."""
        from lenskit.data import ItemList, RecQuery

        d, scorer = self.data, self.scorer
        item_ids = np.asarray(d.item_ids)
        out = np.zeros(len(rows))
        if not self.fold_in:
            by_user: dict[int, list[int]] = {}
            for i, row in enumerate(rows):
                by_user.setdefault(int(d.user[row]), []).append(i)
            for user, idx in by_user.items():
                scored = scorer(RecQuery(user_id=d.user_ids[user]), ItemList(item_ids=item_ids[d.item[rows[idx]]]))
                out[idx] = scored.scores()
        else:
            for i, row in enumerate(rows):
                previous = d.previous[row][d.previous[row] >= 0][-FOLD_IN:]
                # The latest rating of each movie rated more than once.
                _, last = np.unique(d.item[previous][::-1], return_index=True)
                previous = previous[::-1][np.sort(last)][::-1]
                history = ItemList(item_ids=item_ids[d.item[previous]], rating=d.rating[previous]) \
                    if len(previous) else None
                query = RecQuery(user_id=d.user_ids[d.user[row]], user_items=history)
                out[i] = scorer(query, ItemList(item_ids=item_ids[d.item[row:row + 1]])).scores()[0]
        fallback = float(scorer.bias.global_bias)
        return np.where(np.isfinite(out), out, fallback)


class OnlineRows(ABC):
    """A row that learns each rating right after predicting it (``predict_then_learn``); only the time spent
    learning counts as its training time (``learn_seconds``)."""

    learn_seconds = 0.0

    @abstractmethod
    def _predict_one(self, row: int) -> float:
        """The library's probability of a positive rating for this row."""

    @abstractmethod
    def _learn_one(self, row: int) -> None:
        """Teach the library this row's label."""

    def train(self, rows: np.ndarray) -> None:
        """Period 0 (nothing to predict yet): learn it."""
        started = time.perf_counter()
        for row in rows:
            self._learn_one(row)
        self.learn_seconds += time.perf_counter() - started

    def predict_then_learn(self, rows: np.ndarray, learn: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows))
        for i, (row, taught) in enumerate(zip(rows, learn)):
            out[i] = self._predict_one(row)
            if taught:
                started = time.perf_counter()
                self._learn_one(row)
                self.learn_seconds += time.perf_counter() - started
        return out

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self._predict_one(row) for row in rows])

    def close(self) -> None:  # noqa: B027 - a hook: only some libraries hold something to release
        """Release what the library holds (VW's workspace)."""


class VowpalPolicy(OnlineRows):
    def __init__(self, data: Ratings, text: np.ndarray, seed: int, learning_rate: float = 0.5,
                 power_t: float = 0.5, l2: float = 0.0) -> None:
        """The settings are VW's own (``-l``, ``--power_t``, ``--l2``), at VW's defaults."""
        Workspace = _require("vowpalwabbit", "vw").Workspace
        self.name, self.data = "vw", data
        self.args = (f"--loss_function logistic --link logistic -q ui --quiet -b 22 --random_seed {seed} "
                     f"-l {learning_rate} --power_t {power_t} --l2 {l2}")
        self.vw = Workspace(self.args, enable_logging=False)
        self.items = [f"|i iid_{m} " + " ".join(f"t{j}:{v:.4f}" for j, v in enumerate(row))
                      for m, row in zip(data.item_ids, text)]

    def _line(self, row: int, label: float | None = None) -> str:
        head = "" if label is None else ("1 " if label > 0.5 else "-1 ")
        return f"{head}|u uid_{self.data.user_ids[self.data.user[row]]} {self.items[self.data.item[row]]}"

    def _predict_one(self, row: int) -> float:
        return self.vw.predict(self._line(row))

    def _learn_one(self, row: int) -> None:
        self.vw.learn(self._line(row, float(self.data.label[row])))

    def close(self) -> None:
        self.vw.finish()


class RiverFM(OnlineRows):
    def __init__(self, data: Ratings, seed: int, factors: int = 10, lr: float = 0.01) -> None:
        """``lr``: the step of every weight, the latent factors' and the intercept's (river's default 0.01)."""
        facto = _require("river.facto", "river_fm")
        optim = _require("river.optim", "river_fm")
        self.name, self.data = "river_fm", data
        self.model = facto.FMClassifier(n_factors=factors, weight_optimizer=optim.SGD(lr),
                                        latent_optimizer=optim.SGD(lr), intercept_lr=lr, seed=seed)
        genres = [text.rsplit("Genres: ", 1)[1].rstrip(".").split(", ") if "Genres: " in text else []
                  for text in data.item_texts]
        self.items = [{f"item={m}": 1.0, **{f"genre={g}": 1.0 for g in gs}} for m, gs in zip(data.item_ids, genres)]

    def _x(self, row: int) -> dict[str, float]:
        return {f"user={self.data.user_ids[self.data.user[row]]}": 1.0, **self.items[self.data.item[row]]}

    def _predict_one(self, row: int) -> float:
        return self.model.predict_proba_one(self._x(row)).get(True, 0.0)

    def _learn_one(self, row: int) -> None:
        self.model.learn_one(self._x(row), bool(self.data.label[row]))
