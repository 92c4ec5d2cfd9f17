"""Offline evaluation on logged experiences: what a policy version would have earned, before it serves.

The same estimators the learner's gate uses (``models/ope.py``, ``models/evaluation.py``)
on the same decision rows the learner trains on (``batches.py``): a top-of-slate
experience that names its candidates. A purchase arrives as a follow-up experience of
its (request, item); it is added to that decision's reward here, as the learner's
reward sums its parts. Logs without candidates, or whose propensities say nothing
(all 1.0 among several candidates), cannot be evaluated off-policy; ``unevaluable``
says why instead of printing a number that means nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import numpy as np

from models import ope
from models.batch import hash_ids
from models.evaluation import estimate
from models.gate import GateConfig, Verdict, judge
from models.policy import TwoTowerPolicy
from models.ranking import auc
from models.serving import Recent, ServingPolicy
from stream import schemas
from stream.items.embeddings import Catalogue
from stream.learner.batches import ExperienceBatcher, is_full_decision


def shown_items(experiences: Iterable[schemas.Experience], since: float | None = None) -> list[schemas.Experience]:
    """One record per shown item (repeats on the at-least-once topic dropped), its reward parts summed."""
    seen: set[str] = set()
    merged: dict[tuple[str, str], schemas.Experience] = {}
    extra: dict[tuple[str, str], float] = {}
    for e in experiences:
        if e.event_id in seen or (since is not None and e.ts < since):
            continue
        seen.add(e.event_id)
        key = (e.request_id, e.action)
        if e.kind == "purchase":
            extra[key] = extra.get(key, 0.0) + e.reward
        elif key not in merged:
            merged[key] = e
    out = []
    for key, e in merged.items():
        bonus = extra.get(key)
        out.append(msgspec.structs.replace(e, reward=e.reward + bonus) if bonus else e)
    return out


def decisions(shown: list[schemas.Experience]) -> list[schemas.Experience]:
    """The rows off-policy evaluation can use: top of a slate, chosen among named candidates."""
    return [e for e in shown if is_full_decision(e)]


def unevaluable(shown: list[schemas.Experience], rows: list[schemas.Experience]) -> str | None:
    """Why these logs cannot be evaluated off-policy, or None when they can."""
    if not shown:
        return "no experiences in the logs (or none since --since)"
    if not rows:
        return ("the logs lack candidates: no top-of-slate experience names what it was chosen among "
                "(import with candidates, e.g. --map candidates=COLUMN, or the obd preset)")
    if all(e.propensity >= 1.0 for e in rows) and any(len(e.candidates or ()) > 1 for e in rows):
        return ("the logs lack propensities: every choice among several candidates is logged with propensity "
                "1.0, so nothing says how likely the logging policy was to choose it (import with --map "
                "propensity=COLUMN)")
    return None


@dataclass(frozen=True)
class Evaluation:
    estimates: dict[str, ope.Estimate]
    decisions: int
    skipped_width: int


def logged_value(rows: list[schemas.Experience], n_boot: int, seed: int = 0) -> dict[str, ope.Estimate]:
    """The logging policy's own value (its target is its behaviour: IPS = SNIPS = the mean reward)."""
    reward = np.array([e.reward for e in rows])
    propensity = np.array([e.propensity for e in rows])
    return {"ips": ope.ips(reward, propensity, propensity, n_boot=n_boot, seed=seed),
            "snips": ope.snips(reward, propensity, propensity, n_boot=n_boot, seed=seed)}


def evaluate_policy(model: TwoTowerPolicy, catalogue: Catalogue, rows: list[schemas.Experience],
                    n_boot: int, clip: float | None = None, seed: int = 0) -> Evaluation:
    """IPS, SNIPS, DM and DR of the version as it is served (its exploration rule), with bootstrap intervals."""
    batch = _decision_batch(model, catalogue, rows)
    model.eval()
    return Evaluation(estimate(model, batch, clip=clip, n_boot=n_boot, seed=seed), len(batch),
                      len(rows) - len(batch))


def _decision_batch(model: TwoTowerPolicy, catalogue: Catalogue, rows: list[schemas.Experience]):
    """The decisions of the version's context width, as tensors (ValueError when there are none)."""
    batcher = ExperienceBatcher(model.config, catalogue)
    usable = [e for e in rows if batcher.fits(e)]
    if not usable:
        raise ValueError(f"no decision has the policy's context width ({model.config.user_features} features)")
    return batcher.batch(usable)


def compare_versions(policy: TwoTowerPolicy, baseline: TwoTowerPolicy, catalogue: Catalogue,
                     rows: list[schemas.Experience], n_boot: int, clip: float | None = None) -> Verdict:
    """The gate's paired comparison: DR of ``policy`` minus ``baseline`` on the same decisions and resamples,
    one reward model (the policy's) for both, with its confidence interval."""
    config = GateConfig(min_decisions=1, n_boot=max(n_boot, 1), clip=clip if clip is not None else float("inf"))
    return judge(policy.eval(), baseline.eval(), _decision_batch(policy, catalogue, rows), config)


def per_item(shown: list[schemas.Experience], n_boot: int, seed: int = 0) -> list[dict]:
    """IPS and SNIPS of "always show item a", for every item, over every shown item's experience.

    IPS_a = sum over experiences of 1[a_i = a] r_i / p_i, divided by their number; SNIPS divides
    by the sum of the weights instead (OBP's per-action estimates on the Open Bandit Dataset).
    """
    reward = np.array([e.reward for e in shown])
    propensity = np.array([e.propensity for e in shown])
    actions = np.array([e.action for e in shown])
    out = []
    for item in sorted(set(actions.tolist())):
        target = (actions == item).astype(np.float64)
        out.append({"item": item, "shown": int(target.sum()),
                    "ips": ope.ips(reward, propensity, target, n_boot=n_boot, seed=seed).as_dict(),
                    "snips": ope.snips(reward, propensity, target, n_boot=n_boot, seed=seed).as_dict()})
    return out


def ranking(model: TwoTowerPolicy, catalogue: Catalogue, shown: list[schemas.Experience],
            start: float | None = None, end: float | None = None, history: int = 20) -> dict[str, float]:
    """How well the version ranks what users went on to reward, served as the scorer serves it: each shown
    item's estimate at the top position, adapted to the user's last ``history`` outcomes before it (the
    scorer's memory, rebuilt from the logs in time order; outcomes before ``start`` only fill it).

    Needs neither candidates nor propensities, so it judges logs that off-policy estimators cannot
    (MovieLens): AUC over every shown item in [start, end), and the positives' share.
    """
    policy = ServingPolicy(model)
    cfg = policy.config
    ordered = sorted(shown, key=lambda e: e.ts)
    items = list(dict.fromkeys(e.action for e in ordered))
    texts, buckets = catalogue.lookup(items, cfg.item_buckets)
    vectors, bias = policy.item_vectors(buckets, texts)
    index = {item: i for i, item in enumerate(items)}
    no_history = np.zeros(cfg.text_dim, dtype=np.float32)
    memory: dict[str, deque[tuple[int, int, float]]] = {}
    users: dict[str, np.ndarray] = {}
    labels, scores = [], []
    for e in ordered:
        if end is not None and e.ts >= end:
            break
        seen = memory.setdefault(e.user_id, deque(maxlen=history))
        if start is None or e.ts >= start:
            user = users.get(e.user_id) if not e.context.features else None
            if user is None:    # features differ per request; without them the vector is the user's own
                features = np.asarray(e.context.features or np.zeros(cfg.user_features), dtype=np.float32)
                user = policy.user_vector(features, int(hash_ids([e.user_id], cfg.user_buckets)[0]), no_history)
                if not e.context.features:
                    users[e.user_id] = user
            recent = None
            if seen:
                rows = np.array([i for i, _, _ in seen])
                recent = Recent(vectors[rows], bias[rows], np.minimum([p for _, p, _ in seen], cfg.max_positions - 1),
                                np.array([r for *_, r in seen]))
            i = index[e.action]
            scores.append(float(policy.estimates(user, vectors[i:i + 1], bias[i:i + 1], recent)[0]))
            labels.append(e.reward)
        seen.append((index[e.action], e.position, e.reward))
    y = np.array(labels)
    return {"auc": auc(y, np.array(scores)), "scored": len(y), "positive_share": float((y > 0.5).mean()) if len(y) else
            float("nan")}
