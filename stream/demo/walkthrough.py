"""`recsys-stream demo --walkthrough`: a short tour of the foundation, without the learning loop.

It starts (or uses) a broker, creates the topics, ingests a small shop's events (a
few of them deliberately broken) and shows what reached each topic and the
dead-letter topic. The closed loop itself is ``stream/demo/closed_loop.py``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stream import schemas
from stream.config import Settings
from stream.ingest.files import INGESTIBLE, ingest_file
from stream.kafka.broker import EmbeddedBroker, embedded_settings
from stream.kafka.clients import make_admin
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import ensure_topics, topic_name

CATALOGUE = [
    ("i1", "Trail running shoes", "Light shoes for muddy mountain trails", "sport", 89.0),
    ("i2", "Road running shoes", "Cushioned shoes for long road runs", "sport", 120.0),
    ("i3", "Espresso machine", "Compact espresso maker with milk frother", "kitchen", 249.0),
    ("i4", "Pour-over coffee kit", "Glass dripper, filters and a gooseneck kettle", "kitchen", 59.0),
    ("i5", "Rain jacket", "Breathable waterproof shell for running in the rain", "sport", 140.0),
]


def demo_events(start: float, width: int) -> dict[str, list[str]]:
    """A small shop's morning as JSONL lines per topic, including lines that must be refused; its
    impressions' contexts are ``width`` wide, the policy's (RECSYS_USER_FEATURES)."""
    lines: dict[str, list[str]] = {t: [] for t in INGESTIBLE}
    for item_id, title, description, category, price in CATALOGUE:
        lines["items"].append(json.dumps({"item_id": item_id, "title": title, "description": description,
                                          "category": category, "price": price, "ts": start}))
    for n, (user, slate) in enumerate([("u1", ["i1", "i2", "i5"]), ("u2", ["i3", "i4", "i1"]),
                                        ("u3", ["i5", "i1", "i3"])]):
        request = f"req-{n}"
        lines["impressions"].append(json.dumps({
            "event_id": f"imp-{n}", "request_id": request, "user_id": user, "ts": start + n,
            "policy_version": 0, "context": {"features": ([0.1 * n, 1.0] + [0.0] * width)[:width]},
            "shown": [{"item_id": i, "position": p, "propensity": 1 / 3} for p, i in enumerate(slate)],
        }))
        lines["clicks"].append(json.dumps({"event_id": f"clk-{n}", "request_id": request, "user_id": user,
                                           "item_id": slate[0], "ts": start + n + 2}))
    lines["purchases"].append(json.dumps({"event_id": "pur-0", "request_id": "req-0", "user_id": "u1",
                                          "item_id": "i1", "value": 89.0, "ts": start + 60}))
    # What real feeds send on a bad day: each must reach the dead-letter topic with its reason.
    lines["clicks"].append('{"event_id": "clk-broken", "user_id": "u9", ')
    lines["clicks"].append(json.dumps({"event_id": "clk-ms", "user_id": "u1", "item_id": "i2",
                                       "ts": start * 1000}))
    lines["purchases"].append(json.dumps({"event_id": "pur-neg", "user_id": "u2", "item_id": "i3",
                                          "value": -249.0, "ts": start + 61}))
    return lines


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[Settings]:
    """Use the configured cluster, or start an embedded broker for the duration (one partition per
    topic unless RECSYS_PARTITIONS says: ``stream.kafka.broker.EMBEDDED_PARTITIONS``)."""
    with broker_process_for(settings) as (live, _pid):
        yield live


@contextlib.contextmanager
def broker_process_for(settings: Settings) -> Iterator[tuple[Settings, int | None]]:
    """``broker_for``, with the embedded broker's pid (None for a configured cluster), to watch its memory."""
    if settings.bootstrap_servers:
        yield settings, None
        return
    with EmbeddedBroker() as broker:
        yield embedded_settings(settings, broker.bootstrap_servers), broker.pid


def run_demo(settings: Settings, say: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    with broker_for(settings) as live:
        say(f"broker: {live.bootstrap_servers}")
        created = ensure_topics(make_admin(live, "demo"), live)
        say(f"topics: {len(created)} ready ({sum(v == 'created' for v in created.values())} created)")
        ingested = {}
        with tempfile.TemporaryDirectory(prefix="recsys-demo-") as tmp, \
                EventProducer(live, component="demo") as producer:
            for logical, lines in demo_events(time.time() - 3600, live.user_features).items():
                path = Path(tmp) / f"{logical}.jsonl"
                path.write_text("\n".join(lines) + "\n")
                report = ingest_file(live, path, logical, producer=producer)
                ingested[logical] = {"read": report.read, "produced": report.produced,
                                     "dead_lettered": report.dead_lettered}
                say(f"ingest {logical}: read {report.read}, produced {report.produced}, "
                    f"dead-lettered {report.dead_lettered}")
        on_topics = {logical: len(read_topic(live, topic_name(live, logical), role="demo"))
                     for logical in INGESTIBLE}
        letters = [schemas.decode("dlq", m.value())
                   for m in read_topic(live, topic_name(live, "dlq"), role="demo")]
        reasons = Counter(letter.reason for letter in letters)
        for letter in letters:
            say(f"dead letter from {letter.source_topic} ({letter.reason}): {letter.error[:90]}")
    return {
        "bootstrap_servers": live.bootstrap_servers,
        "embedded_broker": settings.bootstrap_servers is None,
        "ingested": ingested,
        "messages_on_topics": on_topics,
        "dead_letters": dict(reasons),
        "seconds": round(time.monotonic() - started, 2),
    }
