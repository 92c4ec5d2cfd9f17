"""The policy at serve time: a numpy snapshot of one version, scored per request.

A scorer answers single requests in a tight latency budget; torch's per-op dispatch
costs more than the maths at these sizes. So a version is copied once, when it is
swapped in, into plain arrays, and a request is a few matrix-vector products: the
user tower, the candidates' item vectors, the posterior of the user's fast weights
under the meta-learned prior (``ServeAdapter``) and an exploring Plackett-Luce slate
with exact sequential propensities, the same maths as ``models.policy`` and
``models.exploration`` (tests hold them equal). ``ServingPolicy.decide`` is the one
serving decision: the scorer and the quality benchmark both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.exploration import Exploration, probabilities
from models.meta import ServeAdapter
from models.policy import PolicyConfig, TwoTowerPolicy


@dataclass(frozen=True)
class Recent:
    """What a user was shown lately and what it earned: the evidence the fast weights adapt on."""

    vectors: np.ndarray     # (S, dim) item vectors
    bias: np.ndarray        # (S,)
    positions: np.ndarray   # (S,) int
    rewards: np.ndarray     # (S,)


@dataclass(frozen=True)
class Decision:
    slate: np.ndarray           # (k,) candidate indices, top first
    propensities: np.ndarray    # (k,) P(item at its position | the items above it)
    scores: np.ndarray          # (n,) estimated reward of every candidate (posterior mean)
    probs: np.ndarray           # (n,) the exploration distribution the slate was drawn from


class ServingPolicy:
    """One policy version, frozen as numpy arrays (read-only after construction, safe across threads).

    ``exploration`` overrides the rule the version carries (an operator's choice, logged by the scorer).
    """

    def __init__(self, model: TwoTowerPolicy, exploration: Exploration | None = None) -> None:
        self.config: PolicyConfig = model.config
        self.exploration: Exploration = exploration or model.config.exploration
        w = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
        self.item_id = w["item_id.weight"]
        self.item_bias = w["item_bias.weight"][:, 0]
        self.global_bias = float(w["global_bias"])
        self.text_w, self.text_b = w["text_proj.weight"], w["text_proj.bias"]
        self.user_id = w["user_id.weight"]
        self.history_w = w["history_proj.weight"]
        self.hidden_w, self.hidden_b = w["user_mlp.0.weight"], w["user_mlp.0.bias"]
        self.out_w, self.out_b = w["user_mlp.2.weight"], w["user_mlp.2.bias"]
        self.position_bias = w["position_bias.weight"][:, 0]
        self.adapter = ServeAdapter(model)
        # Retained user towers (``models/retained.py``): only the filled slots, and none when there are none.
        filled = w["retained.stamp"] > 0 if "retained.stamp" in w else np.zeros(0, dtype=bool)
        self.retained = bool(filled.any())
        if self.retained:
            self.r_w1, self.r_b1 = w["retained.w1"][filled], w["retained.b1"][filled]
            self.r_w2, self.r_b2 = w["retained.w2"][filled], w["retained.b2"][filled]
            rows = np.concatenate([[0], 1 + np.flatnonzero(filled)])
            self.gate_w, self.gate_b = w["retained.gate.weight"][rows], w["retained.gate.bias"][rows]

    def user_vector(self, features: np.ndarray, user_bucket: int, history: np.ndarray) -> np.ndarray:
        x = np.concatenate([features, self.user_id[user_bucket], self.history_w @ history])
        current = self.out_w @ np.maximum(self.hidden_w @ x + self.hidden_b, 0.0) + self.out_b
        if not self.retained:
            return current
        logits = self.gate_w @ x + self.gate_b
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        hidden = np.maximum(np.einsum("khi,i->kh", self.r_w1, x) + self.r_b1, 0.0)
        towers = np.einsum("kdh,kh->kd", self.r_w2, hidden) + self.r_b2
        return weights[0] * current + weights[1:] @ towers

    def item_vectors(self, item_bucket: np.ndarray, item_text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) vectors and (n,) biases; text lets an item no one has clicked be scored."""
        vectors = self.item_id[item_bucket] + item_text @ self.text_w.T + self.text_b
        return vectors, self.item_bias[item_bucket] + self.global_bias

    def item_vectors_projected(self, item_bucket: np.ndarray, projected_text: np.ndarray,
                               ) -> tuple[np.ndarray, np.ndarray]:
        """``item_vectors`` with the text already projected (``TextProjections``): no matrix product per request."""
        return self.item_id[item_bucket] + projected_text, self.item_bias[item_bucket] + self.global_bias

    def project_text(self, item_text: np.ndarray) -> np.ndarray:
        return item_text @ self.text_w.T + self.text_b

    def _personal(self, user: np.ndarray, vectors: np.ndarray, bias: np.ndarray, recent: Recent | None,
                  with_scale: bool = False):
        feats = self.adapter.fast_features(vectors)
        base = vectors @ user + bias
        if recent is None:
            return feats, base, self.adapter.prior_mean, self.adapter.prior_tril
        mean, scale = self.adapter.current(user, recent.vectors, recent.bias, recent.positions, recent.rewards,
                                           with_scale)
        return feats, base, mean, scale

    def estimates(self, user: np.ndarray, vectors: np.ndarray, bias: np.ndarray, recent: Recent | None) -> np.ndarray:
        """Expected reward of each candidate at the top position: the prediction to compare across users and
        requests (logs' AUC, MovieLens). A user's few outcomes move it less than the posterior mean that
        ``decide`` ranks by (``ServeAdapter.held_back``), so the two can order candidates differently."""
        feats, base, mean, _ = self._personal(user, vectors, bias, recent)
        if recent is not None:
            mean = self.adapter.held_back(mean, len(recent.rewards))
        return base + feats @ mean + self.position_bias[0]

    def estimates_at(self, user: np.ndarray, vectors: np.ndarray, bias: np.ndarray, positions: np.ndarray,
                     recent: Recent | None) -> np.ndarray:
        """``estimates`` at the positions the items were shown: what ``ItemEvidence`` measures an item's
        residuals against. Adapted to the user, so that a user's taste, which the posterior already follows,
        is not counted again as the item's (against the unadapted estimate, the simulator lost reward)."""
        return self.estimates(user, vectors, bias, recent) + self.position_bias[positions] - self.position_bias[0]

    def decide(self, user: np.ndarray, vectors: np.ndarray, bias: np.ndarray, recent: Recent | None, k: int,
               rng: np.random.Generator) -> Decision:
        """A slate of ``k`` from these candidates for this user vector, explored as the version says."""
        rule = self.exploration
        feats, base, mean, scale = self._personal(user, vectors, bias, recent, rule.kind == "thompson")
        scores = base + feats @ mean
        samples = None
        if rule.kind == "thompson":
            assert scale is not None
            draws = mean[None, :] + rng.standard_normal((rule.draws, len(mean))) @ scale.T
            samples = base[None, :] + draws @ feats.T
        probs = probabilities(scores, rule, samples)
        slate, propensities = sample_slate(probs, k, rng)
        return Decision(slate, propensities, scores, probs)


class TextProjections:
    """Each catalogue row's projected text, computed once per version and row, not once per request.

    Projecting 100 candidates' 384-dim text was half of a request's time. Rows are filled
    on first use (a catalogue can be larger than what is ever asked for) and refilled when
    the row's text was rewritten since (its write stamp moved). Concurrent fills of one row
    write identical values, so readers need no lock.
    """

    def __init__(self, policy: ServingPolicy, capacity: int = 1024) -> None:
        self.policy = policy
        self.values = np.zeros((capacity, policy.config.dim), dtype=np.float32)
        self.stamps = np.full(capacity, -1, dtype=np.int64)

    def get(self, rows: np.ndarray, current: np.ndarray, texts: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Projected text of ``rows`` whose texts were last written at ``current`` (stamps read before
        the texts); ``texts(rows)`` gives the embeddings of the rows that need projecting."""
        top = int(rows.max()) + 1 if len(rows) else 0
        if top > len(self.values):
            size = max(top, 2 * len(self.values))
            grown = np.zeros((size, self.values.shape[1]), dtype=np.float32)
            grown[:len(self.values)] = self.values
            stamps = np.full(size, -1, dtype=np.int64)
            stamps[:len(self.stamps)] = self.stamps
            self.values, self.stamps = grown, stamps
        values, stamps = self.values, self.stamps
        stale = stamps[rows] != current
        if stale.any():
            fill = rows[stale]
            values[fill] = self.policy.project_text(texts(fill))
            stamps[fill] = current[stale]
        return values[rows]


def sample_slate(probs: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Plackett-Luce draw of k distinct candidates (Gumbel top-k) and each one's sequential propensity:
    P(item at position p | the items above it)."""
    keys = np.log(np.maximum(probs, 1e-300)) + rng.gumbel(size=len(probs))
    slate = np.argpartition(-keys, k - 1)[:k] if k < len(probs) else np.arange(len(probs))
    slate = slate[np.argsort(-keys[slate], kind="stable")]
    chosen = probs[slate].astype(np.float64)
    above = np.cumsum(chosen) - chosen
    return slate, np.minimum(chosen / np.maximum(1.0 - above, 1e-12), 1.0)


def uniform_slate(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """What a scorer serves before any version exists: a uniform random slate, propensity 1/(n - p)."""
    slate = rng.permutation(n)[:k]
    return slate, 1.0 / (n - np.arange(k, dtype=np.float64))
