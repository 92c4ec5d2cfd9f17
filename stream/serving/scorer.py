"""The scorer: ranks candidates for a user with the live policy, over HTTP and over Kafka.

Per request it reads the live version once (a single reference, replaced whole by
the policy subscriber's thread after the new version has been built off the hot
path), so no request ever sees half a policy and none waits for a swap. It adapts
the policy to the user from their recent experiences (the posterior of the fast
weights under the meta-learned prior, followed from the ``experiences`` topic),
scores unknown items from their text embedding (the ``items`` topic through the
packaged MiniLM), draws a slate with exact propensities by the exploration the
version carries (``ServingPolicy.decide``; an operator's ``--temperature`` or
``--epsilon`` overrides it, logged and exported), and logs what it showed to ``impressions``, which is
where the reward join starts. Before any version exists it serves uniform random
slates as version 0: that traffic is what the first version learns from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from models.batch import hash_ids
from models.blas_lane import BLAS_LANE
from models.encoders import TextEncoder
from models.exploration import KINDS
from models.serving import Recent, ServingPolicy, TextProjections, uniform_slate
from stream import schemas
from stream.config import Settings
from stream.items.embeddings import Catalogue
from stream.kafka.clients import LOGGING_LINGER_MS
from stream.kafka.follower import TopicFollower
from stream.kafka.producer import EventProducer
from stream.ops.memory import MallocTrimmer
from stream.policy.bus import LivePolicy, PolicySubscriber
from stream.serving.kafka_transport import KafkaTransport
from stream.serving.requests import SCORE_LATENCY, SCORE_REQUESTS, BadRequest
from stream.serving.user_memory import UserMemory

log = logging.getLogger(__name__)

OVERSIZED_CANDIDATE_LOGS = Counter(
    "recsys_scorer_candidates_not_logged_total",
    "Impressions logged without their candidate list because it would not fit the event size limit.")
SCORER_SWAPS = Counter("recsys_scorer_policy_swaps_total", "Policy versions this scorer swapped to.")
REMEMBERED_USERS = Gauge("recsys_scorer_remembered_users",
                         "Users whose recent outcomes this scorer keeps for serve-time adaptation.")
REMEMBERED_OUTCOMES = Gauge("recsys_scorer_remembered_outcomes", "Recent outcomes kept over all remembered users.")
SWAP_BUILD_SECONDS = Histogram(
    "recsys_scorer_swap_build_seconds", "Time to prepare a new version for serving (off the request path).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0))
EXPLORATION = Gauge("recsys_scorer_exploration", "The exploration this scorer serves: kind (1 on the served "
                    "kind's series) and its settings.", ["setting"])
EXPLORATION_OVERRIDES = Gauge("recsys_scorer_exploration_overridden",
                              "1 for each exploration setting an operator overrides (--temperature, --epsilon).",
                              ["setting"])
#: Seconds a connection may take to send a request (or sit idle between keep-alive requests).
READ_TIMEOUT = 10.0
#: Connections served at once; one more is answered 503 and closed instead of taking a thread.
MAX_CONNECTIONS = 256

REFUSED_CONNECTIONS = Counter(
    "recsys_scorer_refused_connections_total", "HTTP connections answered 503 and closed: over the connection cap.")
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
        self._served = _Served(0, None)
        self.live_metrics: dict[str, float] = {}   # the live version's header metrics (gate, freshness)
        self._rngs = threading.local()
        self.swaps: list[int] = []

    @property
    def version(self) -> int:
        return self._served.version

    def swap(self, live: LivePolicy) -> None:
        """Prepare ``live`` for serving, then replace the served version in one assignment."""
        started = time.perf_counter()
        if live.model.config.text_dim != self.catalogue.dim:
            log.error("policy v%d expects %d-dim item text, the encoder gives %d: keeping v%d", live.version,
                      live.model.config.text_dim, self.catalogue.dim, self.version)
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
        self._served = served
        self.live_metrics = dict(live.header.metrics)
        self.swaps.append(live.version)
        del self.swaps[:-MAX_REMEMBERED_SWAPS]
        SCORER_SWAPS.inc()
        trained_through = live.header.metrics.get("trained_through_ts")
        if trained_through:
            FRESHNESS.observe(max(0.0, time.time() - trained_through))

    def _rng(self) -> np.random.Generator:
        rng = getattr(self._rngs, "rng", None)
        if rng is None:
            rng = self._rngs.rng = np.random.default_rng()
        return rng

    def score(self, request: schemas.ScoreRequest) -> schemas.ScoreResponse:
        served = self._served           # one read: this request uses this version throughout
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
                vectors, bias = self._item_vectors(served, candidates)
                evidence = None
                if recent:
                    seen_vectors, seen_bias = self._item_vectors(served, [item for item, _, _ in recent])
                    positions = np.minimum([p for _, p, _ in recent], cfg.max_positions - 1)
                    evidence = Recent(seen_vectors, seen_bias, positions, np.asarray([r for *_, r in recent]))
                    adapted = len(recent)
                decision = policy.decide(user, vectors, bias, evidence, k, self._rng())
            slate, propensities, scores = decision.slate, decision.propensities, decision.scores
        propensities = np.clip(propensities, 1e-9, 1.0)
        shown = [schemas.ShownItem(candidates[i], pos, float(propensities[pos]), float(scores[i]))
                 for pos, i in enumerate(slate)]
        self.events.send("impressions", schemas.Impression(
            event_id=impression_id(request_id), request_id=request_id, user_id=request.user_id, ts=now,
            shown=shown, policy_version=served.version, context=request.context,
            candidates=list(candidates) if _fits(candidates) else None))
        return schemas.ScoreResponse(
            request_id=request_id, user_id=request.user_id, policy_version=served.version,
            slate=[schemas.ScoredItem(s.item_id, s.position, s.propensity, s.score or 0.0) for s in shown],
            personalised_from=adapted, ts=now)

    def _item_vectors(self, served: _Served, items: list[str]) -> tuple[np.ndarray, np.ndarray]:
        catalogue = self.catalogue
        rows, buckets = catalogue.rows(items, served.policy.config.item_buckets)
        projected = served.texts.get(rows, catalogue.stamps(rows), catalogue.texts)
        return served.policy.item_vectors_projected(buckets, projected)

    def observe_experience(self, experience: schemas.Experience, now: float) -> None:
        if experience.kind != "purchase":      # a purchase follow-up would count one outcome twice
            self.memory.record(experience.user_id, experience.action, experience.position, experience.reward, now)


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


def decode_request(body: bytes) -> schemas.ScoreRequest:
    """A validated request, or ``BadRequest`` saying what is wrong with it (the Kafka transport's contract)."""
    try:
        return schemas.decode("score-requests", body)
    except schemas.InvalidMessage as exc:
        if exc.reason == "oversized":
            raise BadRequest(f"request body is {len(body)} bytes, over {schemas.MAX_EVENT_BYTES}", 413) from None
        if exc.reason == "schema":
            raise BadRequest(f"invalid request: {exc.detail}", 422) from None
        raise BadRequest(f"request body: {exc.detail}") from None     # malformed_json: not JSON, or nested too deep


class ScorerService:
    """A scorer with its followers (policies, items, experiences), HTTP server and Kafka transport."""

    def __init__(self, settings: Settings, encoder: TextEncoder, config: ScorerConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0, kafka_requests: bool = True,
                 request_max_age: float = 30.0, read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, trim_seconds: float = 30.0) -> None:
        self.settings = settings
        self.scorer = Scorer(settings, encoder, config)
        self.subscriber = PolicySubscriber(settings, "scorer", on_swap=self.scorer.swap)
        now = time.time
        self.items = TopicFollower(settings, "items", self.scorer.catalogue.add, from_start=True, component="scorer")
        self.experiences = TopicFollower(
            settings, "experiences", lambda exps: [self.scorer.observe_experience(e, now()) for e in exps],
            from_start=False, component="scorer")
        self.http = _QuietServer((host, port), _handler_for(self, read_timeout), max_connections=max_connections)
        self.http.daemon_threads = True
        self._stop = threading.Event()
        self.kafka = KafkaTransport(settings, self.scorer, self._stop, request_max_age) if kafka_requests else None
        self._threads: list[threading.Thread] = []
        self.trimmer = MallocTrimmer(trim_seconds, self._stop, "scorer") if trim_seconds > 0 else None

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, wait: float = 120.0) -> ScorerService:
        """Start following and serving; return once the catalogue and the latest policy are loaded."""
        self.items.start()
        self.experiences.start()
        if not self.items.caught_up.wait(wait):
            raise TimeoutError(f"items topic not read to its end within {wait:.0f}s")
        log.info("catalogue: %d items", len(self.scorer.catalogue))
        self.subscriber.start(wait)
        serve = threading.Thread(target=self.http.serve_forever, name="scorer-http", daemon=True)
        serve.start()
        self._threads.append(serve)
        if self.kafka is not None:
            kafka = threading.Thread(target=self.kafka.run, name="scorer-kafka", daemon=True)
            kafka.start()
            self._threads.append(kafka)
        if self.trimmer is not None:
            if self.trimmer.available:
                self.trimmer.start()
                self._threads.append(self.trimmer)
            else:
                log.info("no glibc malloc_trim here: freed memory is left to the allocator")
        log.info("scoring on %s (policy v%d)", self.url, self.scorer.version)
        return self

    def health(self) -> dict:
        """What ``/healthz`` answers: "ok", or "degraded" (HTTP 503) while the Kafka transport is down."""
        health = {"status": "ok", "policy_version": self.scorer.version, "policy_metrics": self.scorer.live_metrics,
                  "catalogue_items": len(self.scorer.catalogue)}
        if self.kafka is not None:
            health["kafka_transport"] = {"up": self.kafka.up, "restarts": self.kafka.restarts,
                                         "last_error": self.kafka.last_error}
            if not self.kafka.up:
                health["status"] = "degraded"
        return health

    def run(self) -> None:
        """Serve until ``stop()``, then close everything (the role lifecycle's entry point)."""
        self.start()
        log.info("scorer ready: %s/score, %s/metrics", self.url, self.url)
        self._stop.wait()
        self.close()

    def stop(self) -> None:
        """Ask ``run()`` to close (safe from a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        """Stop serving and following, flush the logged impressions, release the clients."""
        self._stop.set()
        self.http.shutdown()
        self.http.server_close()
        self.subscriber.stop()
        for follower in (self.items, self.experiences):
            follower.stopping.set()
            follower.join(10)
        for thread in self._threads:
            thread.join(10)
        self.scorer.events.flush(10)
        self.scorer.events.release()


#: Request header limits, as the stdlib's (http.client): longest line, most header lines.
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


class RequestHeaders(dict):
    """Request headers by lower-case name; the first of repeated names wins (as ``email.message.Message.get``).

    The stdlib builds an ``email.message.Message`` per request through the email package's
    feed parser: a quarter of a scoring request's time under the GIL went there.
    """

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return dict.get(self, name.lower())


class _QuietServer(ThreadingHTTPServer):
    """The stdlib threading server with bounds: concurrent connections capped, errors kept off stderr.

    A client that hangs up or times out is routine, not a traceback; a connection over the
    cap gets a JSON 503 and is closed at once rather than a thread of its own.
    """

    def __init__(self, *args, max_connections: int = MAX_CONNECTIONS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            REFUSED_CONNECTIONS.inc()
            try:
                body = json.dumps({"error": f"over {self.max_connections} open connections; retry"}).encode()
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.debug("client %s went away", client_address)
            return
        log.exception("HTTP request from %s failed", client_address)


def _handler_for(service: ScorerService, read_timeout: float = READ_TIMEOUT) -> type[BaseHTTPRequestHandler]:
    scorer = service.scorer
    answered, answered_in = SCORE_REQUESTS.labels("http", "ok"), SCORE_LATENCY.labels("http")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # A response goes out in one write (``_send``); should anything write twice, Nagle's
        # algorithm and the client's delayed ACK would add ~40 ms to a keep-alive response.
        disable_nagle_algorithm = True
        # A half-sent request (or an idle keep-alive connection) is dropped after this long.
        timeout = read_timeout

        def parse_request(self) -> bool:
            """The request line and headers, parsed without the email package (see ``RequestHeaders``).

            Only what this API speaks: ``METHOD /path HTTP/1.0`` or ``HTTP/1.1``; anything else is
            answered 400 (505 for other versions), too long or too many header lines 431.
            """
            self.command = None
            self.request_version = self.default_request_version
            self.close_connection = True
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            words = self.requestline.split()
            if len(words) != 3:
                self.send_error(400, f"bad request line {self.requestline[:200]!r}")
                return False
            command, path, version = words
            if version not in ("HTTP/1.0", "HTTP/1.1"):
                bad = not version.startswith("HTTP/")
                self.send_error(400 if bad else 505, f"unsupported protocol version {version[:40]!r}")
                return False
            self.command, self.path, self.request_version = command, path, version
            headers = RequestHeaders()
            while True:
                line = self.rfile.readline(MAX_HEADER_LINE + 1)
                if len(line) > MAX_HEADER_LINE:
                    self.send_error(431, "header line too long")
                    return False
                if line in (b"\r\n", b"\n", b""):
                    break
                if len(headers) >= MAX_HEADERS:
                    self.send_error(431, f"more than {MAX_HEADERS} headers")
                    return False
                name, sep, value = str(line, "iso-8859-1").partition(":")
                if not sep or not name or name != name.strip():
                    self.send_error(400, f"malformed header line {line[:100]!r}")
                    return False
                name = name.lower()
                value = value.strip()
                if name in headers and name in ("content-length", "transfer-encoding") and headers[name] != value:
                    self.send_error(400, f"conflicting {name} headers")
                    return False
                headers.setdefault(name, value)
            self.headers = headers
            connection = headers.get("connection", "").lower()
            self.close_connection = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
            if headers.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
                return self.handle_expect_100()
            return True

        def log_message(self, fmt: str, *args) -> None:   # access log at debug, not on stderr per request
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            """Status line, headers and body in one write (one syscall, one packet for a small answer);
            no Date or Server header and the access log only at debug, off the hot path."""
            if log.isEnabledFor(logging.DEBUG):
                self.log_request(status)
            close = "Connection: close\r\n" if self.close_connection else ""
            head = (f"{self.protocol_version} {status} {self.responses.get(status, ('',))[0]}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{close}\r\n")
            self.wfile.write(head.encode("latin-1") + body)

        def _error(self, status: int, message: str, close: bool = False) -> None:
            """A JSON error; ``close`` when a body was left unread (its bytes must not be taken for a request)."""
            if close:
                self.close_connection = True
            self._send(status, json.dumps({"error": message}).encode())

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """Every error the stdlib raises itself (bad request line, headers too long, unknown method) as JSON."""
            self.close_connection = True
            # A request line the parser could not read leaves HTTP/0.9, which would send no status line.
            self.request_version = self.protocol_version
            text = message or explain or self.responses.get(code, ("error",))[0]
            try:
                self._send(code, json.dumps({"error": text}).encode())
            except OSError:
                pass

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/healthz":
                health = service.health()
                self._send(200 if health["status"] == "ok" else 503, json.dumps(health).encode())
            elif self.path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._error(404, f"no such path {self.path}; try POST /score, GET /healthz or GET /metrics")

        def _refuse_method(self) -> None:
            self._error(405, f"{self.command} is not served; POST /score, GET /healthz or GET /metrics", close=True)

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/score":
                self._error(404, f"no such path {self.path}; POST /score", close=True)
                return
            started = time.perf_counter()
            if self.headers.get("Transfer-Encoding"):
                SCORE_REQUESTS.labels("http", "invalid").inc()
                self._error(411, "chunked bodies are not accepted; send Content-Length", close=True)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length < 0:
                    raise ValueError
            except ValueError:
                SCORE_REQUESTS.labels("http", "invalid").inc()
                self._error(400, "Content-Length must be a non-negative integer", close=True)
                return
            if length > schemas.MAX_EVENT_BYTES:
                SCORE_REQUESTS.labels("http", "invalid").inc()
                self._error(413, f"request body is {length} bytes, over {schemas.MAX_EVENT_BYTES}", close=True)
                return
            try:
                raw = self.rfile.read(length)
            except TimeoutError:
                SCORE_REQUESTS.labels("http", "invalid").inc()
                self._error(408, f"request body not received within {self.timeout:g}s", close=True)
                return
            if len(raw) < length:            # the client hung up mid-body
                self.close_connection = True
                return
            try:
                response = scorer.score(decode_request(raw))
            except BadRequest as exc:
                SCORE_REQUESTS.labels("http", "invalid").inc()
                self._error(exc.status, str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - answered and counted, never a dropped connection
                log.exception("scoring failed")
                SCORE_REQUESTS.labels("http", "error").inc()
                self._error(500, f"internal error: {type(exc).__name__}")
                return
            self._send(200, schemas.encode(response))
            answered.inc()
            answered_in.observe(time.perf_counter() - started)

    return Handler
