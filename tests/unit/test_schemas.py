"""Validation edges of every topic contract (pure logic, no broker)."""

from __future__ import annotations

import json

import pytest

from stream import schemas
from tests.events import VALID, valid

ALL = sorted(VALID)


def raw(payload: dict) -> bytes:
    return json.dumps(payload).encode()


@pytest.mark.parametrize("topic", ALL)
def test_valid_payload_decodes_and_round_trips(topic):
    event = schemas.decode(topic, raw(valid(topic)))
    assert isinstance(event, schemas.CONTRACTS[topic].type)
    assert schemas.decode(topic, schemas.encode(event)) == event


@pytest.mark.parametrize("topic", ALL)
def test_unknown_fields_are_tolerated(topic):
    payload = valid(topic)
    payload["added_in_v2"] = {"anything": [1, 2]}
    assert schemas.decode(topic, raw(payload)) == schemas.decode(topic, raw(valid(topic)))


REQUIRED = {
    "impressions": ["event_id", "request_id", "user_id", "ts", "shown", "policy_version"],
    "clicks": ["event_id", "user_id", "item_id", "ts"],
    "purchases": ["event_id", "user_id", "item_id", "value", "ts"],
    "items": ["item_id", "title", "ts"],
    "experiences": ["event_id", "request_id", "user_id", "action", "propensity", "reward", "kind", "ts"],
    "policies": ["name", "version", "checksum", "total_bytes", "n_chunks", "created_at"],
    "dlq": ["source_topic", "reason", "error", "original", "original_size"],
}


@pytest.mark.parametrize("topic,field", [(t, f) for t in ALL for f in REQUIRED[t]])
def test_missing_required_field_is_a_schema_error(topic, field):
    payload = valid(topic)
    del payload[field]
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode(topic, raw(payload))
    assert info.value.reason == "schema"
    assert field in info.value.detail


WRONG_TYPE = {
    "impressions": ("policy_version", "three"),
    "clicks": ("ts", "yesterday"),
    "purchases": ("value", "cheap"),
    "items": ("price", [1]),
    "experiences": ("reward", {"r": 1}),
    "policies": ("version", 1.5),
    "dlq": ("original_size", "big"),
}


@pytest.mark.parametrize("topic", ALL)
def test_wrong_type_is_a_schema_error(topic):
    field, bad = WRONG_TYPE[topic]
    payload = valid(topic)
    payload[field] = bad
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode(topic, raw(payload))
    assert info.value.reason == "schema"
    assert field in info.value.detail


@pytest.mark.parametrize("propensity", [0, 0.0, -0.1, 1.0000001, 2, 1e300])
def test_impression_propensity_outside_zero_one(propensity):
    payload = valid("impressions")
    payload["shown"][1]["propensity"] = propensity
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode("impressions", raw(payload))
    assert info.value.reason == "schema"


@pytest.mark.parametrize("propensity", [0, 1.5])
def test_experience_propensity_outside_zero_one(propensity):
    payload = valid("experiences")
    payload["propensity"] = propensity
    with pytest.raises(schemas.InvalidMessage, match="propensity"):
        schemas.decode("experiences", raw(payload))


def test_propensity_exactly_one_is_valid():
    payload = valid("impressions")
    payload["shown"][0]["propensity"] = 1
    assert schemas.decode("impressions", raw(payload)).shown[0].propensity == 1.0


@pytest.mark.parametrize("topic,field", [("purchases", "value"), ("items", "price")])
def test_negative_money_is_refused(topic, field):
    payload = valid(topic)
    payload[field] = -0.01
    with pytest.raises(schemas.InvalidMessage, match=field):
        schemas.decode(topic, raw(payload))


def test_zero_purchase_value_is_valid():
    payload = valid("purchases")
    payload["value"] = 0
    assert schemas.decode("purchases", raw(payload)).value == 0.0


@pytest.mark.parametrize("ts", [-1, 1_763_900_000_000, "2025-01-01"])
def test_timestamps_must_be_epoch_seconds(ts):
    payload = valid("clicks")
    payload["ts"] = ts
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode("clicks", raw(payload))
    assert info.value.reason == "schema"


@pytest.mark.parametrize("topic", ALL)
def test_oversized_message_is_rejected_not_truncated(topic):
    limit = schemas.CONTRACTS[topic].max_bytes
    payload = valid(topic)
    payload["padding"] = "x" * limit
    data = raw(payload)
    assert len(data) > limit
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode(topic, data)
    assert info.value.reason == "oversized"
    assert str(len(data)) in info.value.detail


def test_message_just_under_the_limit_is_accepted():
    payload = valid("clicks")
    payload["padding"] = ""
    base = len(raw(payload))
    payload["padding"] = "x" * (schemas.CONTRACTS["clicks"].max_bytes - base)
    assert len(raw(payload)) == schemas.CONTRACTS["clicks"].max_bytes
    assert schemas.decode("clicks", raw(payload)).event_id == "clk-1"


@pytest.mark.parametrize("data", [b"{bad json", b"", b"\xff\xfe", b'{"event_id": "x",}', b"null"])
def test_malformed_json(data):
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode("clicks", data)
    assert info.value.reason in {"malformed_json", "schema"}
    if data != b"null":
        assert info.value.reason == "malformed_json"


def test_non_object_json_is_a_schema_error():
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode("clicks", b"[1, 2]")
    assert info.value.reason == "schema"


def test_empty_ids_are_refused():
    payload = valid("clicks")
    payload["user_id"] = ""
    with pytest.raises(schemas.InvalidMessage, match="user_id"):
        schemas.decode("clicks", raw(payload))


def test_impression_needs_at_least_one_shown_item():
    payload = valid("impressions")
    payload["shown"] = []
    with pytest.raises(schemas.InvalidMessage, match="shown"):
        schemas.decode("impressions", raw(payload))


def test_impression_positions_and_items_must_be_distinct():
    payload = valid("impressions")
    payload["shown"][1]["position"] = 0
    with pytest.raises(schemas.InvalidMessage, match="distinct positions"):
        schemas.decode("impressions", raw(payload))
    payload = valid("impressions")
    payload["shown"][1]["item_id"] = "i1"
    with pytest.raises(schemas.InvalidMessage, match="distinct"):
        schemas.decode("impressions", raw(payload))


def test_experience_kind_is_closed():
    payload = valid("experiences")
    payload["kind"] = "view"
    with pytest.raises(schemas.InvalidMessage, match="kind"):
        schemas.decode("experiences", raw(payload))


def test_policy_checksum_must_be_sha256_hex():
    payload = valid("policies")
    payload["checksum"] = "not-a-digest"
    with pytest.raises(schemas.InvalidMessage, match="checksum"):
        schemas.decode("policies", raw(payload))


def test_context_features_must_be_finite_numbers():
    payload = valid("experiences")
    payload["context"]["features"] = [1.0, "x"]
    with pytest.raises(schemas.InvalidMessage, match="features"):
        schemas.decode("experiences", raw(payload))
    # JSON has no NaN literal; a huge exponent overflows to inf and is refused too.
    data = raw(valid("experiences")).replace(b"[0.5, -1.0, 2.0, ", b"[0.5, 1e999, ")
    assert b"1e999" in data
    with pytest.raises(schemas.InvalidMessage):
        schemas.decode("experiences", data)


def test_unknown_topic_has_its_own_reason():
    with pytest.raises(schemas.InvalidMessage) as info:
        schemas.decode("nope", b"{}")
    assert info.value.reason == "unknown_topic"


def test_keys_follow_the_contract():
    assert schemas.key_of("clicks", schemas.decode("clicks", raw(valid("clicks")))) == b"u1"
    assert schemas.key_of("items", schemas.decode("items", raw(valid("items")))) == b"i1"
    assert schemas.key_of("policies", schemas.decode("policies", raw(valid("policies")))) == b"default"


def test_reasons_are_a_closed_set():
    for data, topic in [(b"{", "clicks"), (b"{}", "clicks"), (b"x" * 10**6, "clicks")]:
        with pytest.raises(schemas.InvalidMessage) as info:
            schemas.decode(topic, data)
        assert info.value.reason in schemas.REASONS


@pytest.mark.parametrize("topic", ["clicks", "impressions", "score-requests", "experiences", "items"])
def test_deep_nesting_is_refused_as_malformed_not_a_crash(topic):
    """About 1,000 levels in a 2 KB message once raised RecursionError out of decode and stopped roles."""
    deep = b'{"user_id": "u", "extra": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(schemas.InvalidMessage) as refused:
        schemas.decode(topic, deep)
    assert refused.value.reason == "malformed_json" and "nested 1001 levels" in refused.value.detail


def test_nesting_depth_ignores_brackets_inside_strings():
    assert schemas.nesting_depth(b'{"a": [1, {"b": "[[[[\\" ["}]}') == 3
    assert schemas.nesting_depth(b'"[[[["') == 0
    assert schemas.nesting_depth(b"[" * 40 + b"]" * 40) == 40
    # At the limit it decodes as usual (and fails the contract for its own reasons, if any).
    nested = b'{"event_id": "e", "user_id": "u", "item_id": "i", "ts": 1763900000, "x": ' + \
        b"[" * (schemas.MAX_NESTING - 1) + b"]" * (schemas.MAX_NESTING - 1) + b"}"
    assert schemas.decode("clicks", nested).item_id == "i"
