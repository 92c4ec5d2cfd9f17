"""What both scoring transports share: how a request is refused, and how answered requests are counted."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SCORE_REQUESTS = Counter(
    "recsys_scorer_requests_total", "Scoring requests answered, by transport (http, kafka) and status.",
    ["transport", "status"])
SCORE_LATENCY = Histogram(
    "recsys_scorer_latency_seconds", "Time to score one request (decode to answer), by transport.", ["transport"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


class BadRequest(ValueError):
    """A request the scorer refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
