"""Topic names, partitioning and retention, and the idempotent ``ensure_topics``.

Every role calls ``ensure_topics`` at start-up, so the order in which roles start
never matters and a fresh cluster needs no manual set-up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from stream.config import Settings

log = logging.getLogger(__name__)

#: Logical topic names, in the order of docs/ARCHITECTURE.md, "Topics and contracts".
LOGICAL_TOPICS = ("impressions", "clicks", "purchases", "items", "experiences", "policies", "dlq", "join-state",
                  "score-requests", "score-responses")
#: Topics whose latest value per key is the state (compacted, never expire). ``join-state`` is
#: the reward join's changelog (stream/join/state.py), internal to the join workers.
COMPACTED = frozenset({"items", "policies", "join-state"})
#: Raw behaviour events: kept for a bounded time so they can be replayed.
EVENTS = frozenset({"impressions", "clicks", "purchases"})
#: Scoring over Kafka (stream/serving/scorer.py): answers are useful for seconds, not days.
SCORING = frozenset({"score-requests", "score-responses"})
SCORING_RETENTION_MS = 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    logical: str
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_name(settings: Settings, logical: str) -> str:
    if logical not in LOGICAL_TOPICS:
        raise ValueError(f"unknown topic {logical!r}; expected one of {', '.join(LOGICAL_TOPICS)}")
    return f"{settings.topic_prefix}{logical}"


def logical_name(settings: Settings, topic: str) -> str:
    """The logical name of a full topic name (a name without this prefix is returned as it is)."""
    prefix = settings.topic_prefix
    return topic[len(prefix):] if prefix and topic.startswith(prefix) else topic


def partitions_of(settings: Settings, logical: str) -> int:
    """How many partitions a logical topic is created with."""
    if logical == "policies":
        return 1        # a handful of versions: one partition keeps their order total
    if logical in SCORING and settings.scoring_partitions is not None:
        return settings.scoring_partitions
    return settings.partitions


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The full topic layout for these settings."""
    specs = []
    for logical in LOGICAL_TOPICS:
        config = {"max.message.bytes": str(settings.max_message_bytes)}
        config["cleanup.policy"] = "compact" if logical in COMPACTED else "delete"
        if logical in EVENTS:
            config["retention.ms"] = str(settings.event_retention_ms)
        elif logical in SCORING:
            config["retention.ms"] = str(SCORING_RETENTION_MS)
        specs.append(TopicSpec(logical, topic_name(settings, logical), partitions_of(settings, logical), config))
    return specs


class TopicError(RuntimeError):
    pass


def ensure_topics(admin: AdminClient, settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create the topics that are missing; returns ``{name: "created" | "exists"}``.

    Safe to call concurrently from many roles: "already exists" counts as success.
    """
    specs = topic_specs(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    result = {s.name: "exists" for s in specs if s.name in existing}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, num_partitions=s.partitions,
                         replication_factor=settings.replication_factor, config=s.config)
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout)
                result[name] = "created"
                log.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    result[name] = "exists"
                else:
                    raise TopicError(f"could not create topic {name}: {exc.args[0].str()}") from exc
    _wait_visible(admin, [s.name for s in missing], timeout)
    return result


def _wait_visible(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Block until new topics show up in metadata, so producers never race their creation."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        md = admin.list_topics(timeout=timeout)
        pending -= {n for n, t in md.topics.items() if t.error is None and t.partitions}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics not visible after {timeout}s: {sorted(pending)}")
        time.sleep(0.1)


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    cleanup_policy: str
    retention_ms: str


def describe_topics(admin: AdminClient, settings: Settings, timeout: float = 30.0) -> list[TopicInfo]:
    """What the cluster actually holds for our topics (missing ones are left out)."""
    md = admin.list_topics(timeout=timeout)
    names = [s.name for s in topic_specs(settings) if s.name in md.topics]
    if not names:
        return []
    futures = admin.describe_configs([ConfigResource("topic", n) for n in names])
    configs = {res.name: fut.result(timeout=timeout) for res, fut in futures.items()}
    out = []
    for name in names:
        conf = configs.get(name, {})
        out.append(
            TopicInfo(
                name=name,
                partitions=len(md.topics[name].partitions),
                cleanup_policy=_value(conf, "cleanup.policy"),
                retention_ms=_value(conf, "retention.ms"),
            )
        )
    return out


def _value(conf: dict, key: str) -> str:
    entry = conf.get(key)
    return entry.value if entry is not None and entry.value is not None else "-"
