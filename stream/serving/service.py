"""A scorer as a running service: the core, its followers, its HTTP server and its Kafka transport.

The followers feed the core what it serves from (policy versions, the catalogue, users'
recent outcomes); the two transports ask it for slates. ``run`` is the role's entry point.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from models.encoders import TextEncoder
from stream import schemas
from stream.config import Settings
from stream.kafka.follower import TopicFollower
from stream.ops.memory import TRIM_SECONDS, MallocTrimmer
from stream.policy.bus import PolicySubscriber
from stream.serving.http_server import MAX_CONNECTIONS, READ_TIMEOUT, ScoringHTTPServer
from stream.serving.kafka_transport import KafkaTransport
from stream.serving.scorer import Scorer, ScorerConfig

log = logging.getLogger(__name__)


class ScorerService:
    """A scorer with its followers (policies, items, experiences), HTTP server and Kafka transport."""

    def __init__(self, settings: Settings, encoder: TextEncoder, config: ScorerConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0, kafka_requests: bool = True,
                 request_max_age: float = 30.0, read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS, trim_seconds: float = TRIM_SECONDS) -> None:
        self.settings = settings
        self.scorer = Scorer(settings, encoder, config)
        arms = self.scorer.arms.names
        # One follower per arm (each keeps its own chain of versions); outside an experiment the one is "scorer".
        self.subscribers = [PolicySubscriber(settings, "scorer" if len(arms) == 1 else f"scorer.{arm}", name=arm,
                                             on_swap=functools.partial(self.scorer.swap, arm=arm))
                            for arm in arms]
        self.subscriber = self.subscribers[0]
        self.items = TopicFollower(settings, "items", self.scorer.catalogue.add, from_start=True, component="scorer")
        self.experiences = TopicFollower(settings, "experiences", self._observe, from_start=False, component="scorer")
        self.http = ScoringHTTPServer((host, port), self.scorer, self.health, read_timeout, max_connections)
        self._stop = threading.Event()
        self.kafka = KafkaTransport(settings, self.scorer, self._stop, request_max_age) if kafka_requests else None
        self._threads: list[threading.Thread] = []
        self.trimmer = MallocTrimmer(trim_seconds, self._stop, "scorer") if trim_seconds > 0 else None

    def _observe(self, experiences: list[schemas.Experience]) -> None:
        self.scorer.observe_experiences(experiences, time.time())

    @property
    def url(self) -> str:
        host, port = self.http.server_address[:2]
        assert isinstance(host, str)      # an AF_INET server's address
        return f"http://{host}:{port}"

    def start(self, wait: float = 120.0) -> ScorerService:
        """Start following and serving; return once the catalogue and the latest policy are loaded."""
        self.items.start()
        self.experiences.start()
        if not self.items.caught_up.wait(wait):
            raise TimeoutError(f"items topic not read to its end within {wait:.0f}s")
        log.info("catalogue: %d items", len(self.scorer.catalogue))
        for subscriber in self.subscribers:
            subscriber.start(wait)
        if len(self.subscribers) > 1:
            log.info("experiment %s: arms %s; live versions %s", self.scorer.arms.experiment,
                     self.scorer.arms.describe(), self.scorer.versions())
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
        if len(self.subscribers) > 1:
            health["arms"] = {arm: {"share": self.scorer.arms.share_of(arm), "policy_version": version}
                              for arm, version in self.scorer.versions().items()}
            health["experiment"] = self.scorer.arms.experiment
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
        for subscriber in self.subscribers:
            subscriber.stop()
        for follower in (self.items, self.experiences):
            follower.stopping.set()
            follower.join(10)
        for thread in self._threads:
            thread.join(10)
        self.scorer.events.flush(10)
        self.scorer.events.release()
