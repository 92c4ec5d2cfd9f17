"""The scoring core: ranks candidates for a user with the live policy, whichever transport asked.

Per request it reads the live version once (a single reference, replaced whole by
the policy subscriber's thread after the new version has been built off the hot
path), so no request ever sees half a policy and none waits for a swap. It adapts
the policy to the user from their recent experiences (the posterior of the fast
weights under the meta-learned prior, followed from the ``experiences`` topic),
scores unknown items from their text embedding (the ``items`` topic through the
packaged MiniLM), shifts each candidate's bias by what its recent outcomes said
against the version (``models/item_evidence.py``, from ``experiences`` too), draws a
slate with exact propensities by the exploration the version carries
(``ServingPolicy.decide``; an operator's ``--temperature`` or ``--epsilon`` overrides
it, logged and exported), and logs what it showed to ``impressions``, which is where
the reward join starts. Before any version exists it serves uniform random
slates as version 0: that traffic is what the first version learns from.

An online experiment (``ScorerConfig.arms``, ``score --arms A=50,B=50``) serves several
policy names at once: each user is in one arm by a stable hash (``arms.py``), and each
impression says its arm and the policy that chose it. An arm whose learner has not
published yet is served the first arm's live version that exists (logged with that
policy's name, so the comparison can leave those requests out).

The HTTP layer is ``http_server.py``, the Kafka transport ``kafka_transport.py``, and
``service.py`` wires them to the followers that feed this core.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from models.batch import hash_ids
from models.blas_lane import BLAS_LANE
from models.encoders import TextEncoder
from models.exploration import KINDS
from models.item_evidence import ItemEvidence
from models.policy import PolicyConfig
from models.serving import Recent, ServingPolicy, TextProjections, uniform_slate
from stream import schemas
from stream.config import Settings
from stream.experiment.arms import Arms
from stream.items.embeddings import Catalogue
from stream.kafka.clients import LOGGING_LINGER_MS
from stream.kafka.producer import EventProducer
from stream.policy.bus import LivePolicy
from stream.serving.requests import BadRequest
from stream.serving.user_memory import UserMemory

log = logging.getLogger(__name__)

OVERSIZED_CANDIDATE_LOGS = Counter(
    "recsys_scorer_candidates_not_logged_total",
    "Impressions logged without their candidate list because it would not fit the event size limit.")
SCORER_SWAPS = Counter("recsys_scorer_policy_swaps_total", "Policy versions this scorer swapped to.")
REMEMBERED_USERS = Gauge("recsys_scorer_remembered_users",
                         "Users whose recent outcomes this scorer keeps for serve-time adaptation.")
REMEMBERED_OUTCOMES = Gauge("recsys_scorer_remembered_outcomes", "Recent outcomes kept over all remembered users.")
EVIDENCE_ITEMS = Gauge("recsys_scorer_item_evidence_items",
                       "Items whose recent outcomes shift their bias at serve time, over every arm.")
EVIDENCE_PRIOR_WEIGHT = Gauge(
    "recsys_scorer_item_prior_weight", "Outcomes' worth of trust in the version an item's evidence must outweigh "
    "(estimated from the residuals; 1e6: items do not differ from what the version says, so nothing is shifted).",
    ["arm"])
SWAP_BUILD_SECONDS = Histogram(
    "recsys_scorer_swap_build_seconds", "Time to prepare a new version for serving (off the request path).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0))
EXPLORATION = Gauge("recsys_scorer_exploration", "The exploration this scorer serves: kind (1 on the served "
                    "kind's series) and its settings.", ["setting"])
EXPLORATION_OVERRIDES = Gauge("recsys_scorer_exploration_overridden",
                              "1 for each exploration setting an operator overrides (--temperature, --epsilon).",
                              ["setting"])
ARM_REQUESTS = Counter("recsys_scorer_arm_requests_total",
                       "Requests served, by the user's experiment arm and the policy that chose the slate (another "
                       "arm's while this arm has no version yet; none: uniform random before any version).",
                       ["arm", "served_by"])
ARM_VERSION = Gauge("recsys_scorer_arm_version", "Policy version live for each experiment arm (0: none yet).",
                    ["arm"])
PUBLISH_TO_SERVE = Histogram(
    "recsys_scorer_publish_to_serve_seconds",
    "From a version's creation by the learner (its header's created_at) to it serving here: the policies "
    "topic, assembly, verification and the swap.", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
FRESHNESS = Histogram(
    "recsys_freshness_seconds",
    "From the event time of the newest click a version was trained on to that version serving here.",
    buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300))


#: Versions swapped to that a scorer remembers for inspection (the newest; a version every second never stops).
MAX_REMEMBERED_SWAPS = 1000


@dataclass(frozen=True)
class ScorerConfig:
    slate_size: int = 10
    #: Overrides of the exploration each version carries (None: serve it as the learner judged it).
    temperature: float | None = None
    epsilon: float | None = None
    #: Recent experiences kept per user for adaptation, users kept, and how long an idle user is kept.
    history: int = 20
    max_users: int = 100_000
    user_ttl: float = 3600.0
    #: The experiment's arms (policy names and shares of users); None: one arm, RECSYS_POLICY_NAME.
    arms: Arms | None = None
    #: Shift each item's bias by its recent residuals against the live version (``models/item_evidence.py``),
    #: shrunk by a prior weight estimated from them (or this many outcomes, fixed).
    item_evidence: bool = True
    item_prior_weight: float | None = None


@dataclass(frozen=True)
class _Served:
    version: int
    policy: ServingPolicy | None   # None: version 0, uniform random
    texts: TextProjections | None = None    # the catalogue's projected text under this version


class Scorer:
    """The scoring core, shared by the HTTP and Kafka transports (thread-safe)."""

    def __init__(self, settings: Settings, encoder: TextEncoder, config: ScorerConfig | None = None,
                 producer: EventProducer | None = None) -> None:
        self.settings = settings
        self.config = config or ScorerConfig()
        self.catalogue = Catalogue(encoder, "scorer")
        self.memory = UserMemory(self.config.history, self.config.max_users, self.config.user_ttl)
        REMEMBERED_USERS.set_function(lambda: len(self.memory))
        REMEMBERED_OUTCOMES.set_function(lambda: self.memory.outcomes)
        # Impressions are logged, not answered: lingering adds nothing to a response's latency.
        self.events = producer or EventProducer(settings, "scorer", **{"linger.ms": LOGGING_LINGER_MS})
        self.arms = self.config.arms or Arms.single(settings.policy_name)
        # Arm -> its served version, each replaced by one assignment (a request reads it once).
        self._served: dict[str, _Served] = {arm: _Served(0, None) for arm in self.arms.names}
        self._swapping = threading.Lock()      # each arm's follower swaps from its own thread
        self._arm_children: dict[tuple[str, str | None], Counter] = {}
        # Per arm, so one arm's traffic never shifts what another serves.
        self.evidence: dict[str, ItemEvidence] = (
            {arm: ItemEvidence(prior_weight=self.config.item_prior_weight) for arm in self.arms.names}
            if self.config.item_evidence else {})
        EVIDENCE_ITEMS.set_function(lambda: sum(len(e) for e in self.evidence.values()))
        for arm, evidence in self.evidence.items():
            EVIDENCE_PRIOR_WEIGHT.labels(arm).set_function(_prior_weight_of(evidence))
        for arm in self.arms.names:
            ARM_VERSION.labels(arm).set(0)
        self.arm_metrics: dict[str, dict[str, float]] = {}   # each arm's live header metrics (gate, freshness)
        self._rngs = threading.local()
        self.swaps: list[int] = []

    @property
    def version(self) -> int:
        """The first arm's live version (the only arm's, outside an experiment)."""
        return self._served[self.arms.names[0]].version

    @property
    def live_metrics(self) -> dict[str, float]:
        """The first arm's live header metrics (the only arm's, outside an experiment)."""
        return self.arm_metrics.get(self.arms.names[0], {})

    def versions(self) -> dict[str, int]:
        return {arm: served.version for arm, served in self._served.items()}

    def swap(self, live: LivePolicy, arm: str | None = None) -> None:
        """Prepare ``live`` for serving ``arm`` (default: the first), then replace what that arm serves in one
        assignment."""
        arm = arm or self.arms.names[0]
        started = time.perf_counter()
        if live.model.config.text_dim != self.catalogue.dim:
            log.error("policy %s v%d expects %d-dim item text, the encoder gives %d: keeping v%d", arm,
                      live.version, live.model.config.text_dim, self.catalogue.dim, self._served[arm].version)
            return
        carried = live.model.config.exploration
        exploration = carried.with_overrides(temperature=self.config.temperature, epsilon=self.config.epsilon)
        if exploration != carried:
            log.warning("v%d: serving with operator overrides %s instead of the version's %s (the gate judged "
                        "the latter)", live.version, exploration.describe(), carried.describe())
        policy = ServingPolicy(live.model, exploration)
        served = _Served(live.version, policy, TextProjections(policy))
        _export_exploration(exploration, self.config)
        SWAP_BUILD_SECONDS.observe(time.perf_counter() - started)
        with self._swapping:
            self._served = {**self._served, arm: served}
        self.arm_metrics[arm] = dict(live.header.metrics)
        ARM_VERSION.labels(arm).set(live.version)
        self.swaps.append(live.version)
        del self.swaps[:-MAX_REMEMBERED_SWAPS]
        SCORER_SWAPS.inc()
        PUBLISH_TO_SERVE.observe(max(0.0, time.time() - live.header.created_at))
        trained_through = live.header.metrics.get("trained_through_ts")
        if trained_through:
            FRESHNESS.observe(max(0.0, time.time() - trained_through))

    def _rng(self) -> np.random.Generator:
        rng = getattr(self._rngs, "rng", None)
        if rng is None:
            rng = self._rngs.rng = np.random.default_rng()
        return rng

    def _arm_requests(self, arm: str, policy_name: str | None):
        """The request counter's child (looked up once: ``labels`` takes a lock and checks types every call)."""
        key = (arm, policy_name)
        child = self._arm_children.get(key)
        if child is None:
            child = self._arm_children[key] = ARM_REQUESTS.labels(arm, policy_name or "none")
        return child

    def serving(self, user_id: str) -> tuple[str, str | None, _Served]:
        """The user's arm, the policy name that serves it and the version, read once: an arm with no version
        yet is served the first arm's that has one; with none anywhere, uniform random (name None)."""
        arm = self.arms.assign(user_id)
        every = self._served
        served = every[arm]
        if served.policy is not None:
            return arm, arm, served
        for other in self.arms.names:
            if every[other].policy is not None:
                return arm, other, every[other]
        return arm, None, served

    def score(self, request: schemas.ScoreRequest) -> schemas.ScoreResponse:
        arm, policy_name, served = self.serving(request.user_id)   # this request uses this version throughout
        self._arm_requests(arm, policy_name).inc()
        now = time.time()
        candidates = request.candidates
        k = min(request.k or self.config.slate_size, len(candidates))
        request_id = request.request_id or uuid.uuid4().hex
        adapted = 0
        if served.policy is None:
            slate, propensities = uniform_slate(len(candidates), k, self._rng())
            scores = np.zeros(len(candidates))
        else:
            policy = served.policy
            cfg = policy.config
            features = np.asarray(request.context.features, dtype=np.float32)
            if len(features) == 0:
                features = np.zeros(cfg.user_features, dtype=np.float32)
            elif not request.context.fits(cfg.user_features):
                raise BadRequest(f"context.features has {len(features)} values; policy v{served.version} "
                                 f"expects {cfg.user_features}", 422)
            recent = self.memory.recent(request.user_id, now)
            # Zero, as in training (stream/learner/batches.py): taste is the fast weights' job.
            history = np.zeros(cfg.text_dim, dtype=np.float32)
            user_bucket = int(hash_ids([request.user_id], cfg.user_buckets)[0])
            with BLAS_LANE:     # one request's maths at a time: see models/blas_lane.py
                user = policy.user_vector(features, user_bucket, history)
                rows, vectors, bias = self._item_vectors(served, candidates)
                item_evidence = self.evidence.get(policy_name or arm)
                if item_evidence is not None:
                    bias = bias + item_evidence.offsets(rows)
                evidence = self._recent_of(served, recent, cfg)
                adapted = len(recent) if recent else 0
                decision = policy.decide(user, vectors, bias, evidence, k, self._rng())
            slate, propensities, scores = decision.slate, decision.propensities, decision.scores
        propensities = np.clip(propensities, 1e-9, 1.0)
        shown = [schemas.ShownItem(candidates[i], pos, float(propensities[pos]), float(scores[i]))
                 for pos, i in enumerate(slate)]
        self.events.send("impressions", schemas.Impression(
            event_id=impression_id(request_id), request_id=request_id, user_id=request.user_id, ts=now,
            shown=shown, policy_version=served.version, context=request.context,
            candidates=list(candidates) if _fits(candidates) else None, arm=arm, policy_name=policy_name))
        return schemas.ScoreResponse(
            request_id=request_id, user_id=request.user_id, policy_version=served.version,
            slate=[schemas.ScoredItem(s.item_id, s.position, s.propensity, s.score or 0.0) for s in shown],
            personalised_from=adapted, ts=now, arm=arm, policy_name=policy_name)

    def _item_vectors(self, served: _Served, items: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(catalogue rows, vectors, biases) of ``items`` under ``served``."""
        catalogue = self.catalogue
        rows, buckets = catalogue.rows(items, served.policy.config.item_buckets)
        projected = served.texts.get(rows, catalogue.stamps(rows), catalogue.texts)
        return (rows, *served.policy.item_vectors_projected(buckets, projected))

    def observe_experiences(self, experiences: list[schemas.Experience], now: float) -> None:
        """Outcomes followed from ``experiences``: each item's evidence first (against what each user's memory
        held before this batch, as when the request was served), then the users' memories."""
        # A purchase follow-up would count one outcome twice.
        outcomes = [e for e in experiences if e.kind != "purchase"]
        if self.evidence:
            self._record_evidence(outcomes, now)
        for e in outcomes:
            self.memory.record(e.user_id, e.action, e.position, e.reward, now)

    def _record_evidence(self, outcomes: list[schemas.Experience], now: float) -> None:
        """Each outcome's residual against what its arm's live version expects of the item for this user,
        adapted to the user's earlier outcomes: one posterior per request, not per outcome. An arm's evidence
        comes from its own traffic, or from traffic before the experiment (no arm)."""
        requests: dict[tuple[str, str, str], list[schemas.Experience]] = {}
        for e in outcomes:
            for arm in (e.arm,) if e.arm is not None else self.arms.names:
                requests.setdefault((arm, e.request_id, e.user_id), []).append(e)
        for (arm, _, user_id), shown in requests.items():
            evidence, served = self.evidence.get(arm), self._served.get(arm)
            if evidence is not None and served is not None and served.policy is not None:
                self._residuals(evidence, served, user_id, shown, now)

    def _residuals(self, evidence: ItemEvidence, served: _Served, user_id: str,
                   shown: list[schemas.Experience], now: float) -> None:
        """Items the catalogue does not know are skipped (row 0 stands for all of those)."""
        policy = served.policy
        cfg = policy.config
        features = np.asarray(shown[0].context.features, dtype=np.float32)
        if len(features) == 0:
            features = np.zeros(cfg.user_features, dtype=np.float32)
        elif not shown[0].context.fits(cfg.user_features):
            return
        user_bucket = int(hash_ids([user_id], cfg.user_buckets)[0])
        recent = self.memory.recent(user_id, now)
        with BLAS_LANE:
            rows, vectors, bias = self._item_vectors(served, [e.action for e in shown])
            known = rows > 0
            if not known.any():
                return
            user = policy.user_vector(features, user_bucket, np.zeros(cfg.text_dim, dtype=np.float32))
            positions = np.minimum([e.position for e in shown], cfg.max_positions - 1)
            expected = policy.estimates_at(user, vectors, bias, positions, self._recent_of(served, recent, cfg))
        rewards = np.fromiter((e.reward for e in shown), dtype=np.float64, count=len(shown))
        evidence.record(rows[known], (rewards - expected)[known])

    def _recent_of(self, served: _Served, recent: list, cfg: PolicyConfig) -> Recent | None:
        """A user's recent outcomes as the posterior reads them, under ``served``."""
        if not recent:
            return None
        _, vectors, bias = self._item_vectors(served, [item for item, _, _ in recent])
        positions = np.minimum([p for _, p, _ in recent], cfg.max_positions - 1)
        return Recent(vectors, bias, positions, np.asarray([r for *_, r in recent]))


def _prior_weight_of(evidence: ItemEvidence) -> Callable[[], float]:
    return lambda: evidence.prior_weight


def _export_exploration(rule, config: ScorerConfig) -> None:
    for kind in KINDS:
        EXPLORATION.labels(f"kind_{kind}").set(1.0 if rule.kind == kind else 0.0)
    for setting in ("epsilon", "temperature", "gamma", "draws"):
        EXPLORATION.labels(setting).set(float(getattr(rule, setting)))
    for setting in ("temperature", "epsilon"):
        EXPLORATION_OVERRIDES.labels(setting).set(0.0 if getattr(config, setting) is None else 1.0)


def impression_id(request_id: str) -> str:
    """``imp-<request_id>``, or a digest of it when that would exceed the id limit (a valid request
    must never log an impression its own contract refuses)."""
    if len(request_id) + 4 <= schemas.MAX_ID:
        return f"imp-{request_id}"
    return "imp-" + hashlib.sha256(request_id.encode()).hexdigest()


def _fits(candidates: list[str]) -> bool:
    """Whether the candidate list leaves room in an impression (and its experiences) under the event size
    limit; a longer one is left out of the log (those slates then train the reward model only)."""
    if sum(map(len, candidates)) + 3 * len(candidates) <= schemas.MAX_EVENT_BYTES // 2:
        return True
    OVERSIZED_CANDIDATE_LOGS.inc()
    return False
