"""Prometheus metrics shared by every role, and the ``/metrics`` endpoint.

Names follow ``recsys_<what>_<unit>`` (docs/ARCHITECTURE.md, "Metrics"). Labels stay
low-cardinality: topic, component, status, reason; never user or item ids.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

INGEST_LINES = Counter(
    "recsys_ingest_lines_total",
    "Lines read by `recsys-stream ingest`, by target topic and outcome.",
    ["topic", "status"],
)
REPLAY_ROWS = Gauge(
    "recsys_replay_experiences",
    "Experiences held by the replay store, by tier (recent window or reservoir).",
    ["tier"],
)
REPLAY_INSERTS = Counter(
    "recsys_replay_inserts_total",
    "Experiences offered to the replay store, by outcome (added, or duplicate of one already held).",
    ["status"],
)
REPLAY_BATCH_SECONDS = Histogram(
    "recsys_replay_batch_seconds",
    "Time to make one consumed batch durable in the replay store.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` in a background thread; port 0 picks a free one. Returns the port."""
    server, _thread = start_http_server(port, addr=addr)
    bound = server.server_address[1]
    log.info("serving /metrics on http://%s:%d/metrics", addr, bound)
    return bound
