"""Every valid input yields valid derived records: the contracts' bounds, tried at their extremes.

An impression at the edge of its contract (longest ids, largest version, biggest size) must
join into experiences that pass the experiences contract and into join-state records that
encode; a value just past a bound is refused at the edge, never found while encoding state.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from stream import schemas
from stream.join import state as join_state
from stream.join.processor import Coordinates, RewardProcessor
from stream.join.reward_join import JoinConfig
from stream.serving.scorer import impression_id

T0 = 1_763_900_000.0
LONG = "x" * schemas.MAX_ID


def longest(prefix: str) -> str:
    return (prefix + LONG)[: schemas.MAX_ID]


def extreme_impression() -> dict:
    """Longest ids, the largest version, 100 shown items and candidates filling the size limit."""
    shown = [{"item_id": longest(f"item-{i}-"), "position": i, "propensity": 1.0, "score": 1e300}
             for i in range(schemas.MAX_SLATE)]
    body = {"event_id": longest("imp-"), "request_id": longest("req-"), "user_id": longest("user-"), "ts": T0,
            "policy_version": schemas.MAX_VERSION, "shown": shown,
            "context": {"features": [1e300] * 8, "attrs": {"k": "v" * 64}}, "candidates": []}
    # Fill the candidates until the impression sits just under its size limit.
    size = len(json.dumps(body).encode())
    n = 0
    while size + len(longest(f"cand-{n}-")) + 4 < schemas.MAX_EVENT_BYTES and n < schemas.MAX_CANDIDATES:
        body["candidates"].append(longest(f"cand-{n}-"))
        size += len(longest(f"cand-{n}-")) + 4
        n += 1
    return body


def test_an_impression_at_every_limit_joins_into_valid_experiences_and_state():
    body = extreme_impression()
    raw = json.dumps(body).encode()
    assert schemas.MAX_EVENT_BYTES - 200 < len(raw) <= schemas.MAX_EVENT_BYTES
    processor = RewardProcessor(JoinConfig(click_window=30, purchase_window=60, grace=0), component="test")
    at = Coordinates("impressions", 0, 0, None)
    out = processor.handle("impressions", raw, at)
    assert not out.dead_letters, out.dead_letters
    item = body["shown"][7]["item_id"]
    click = {"event_id": longest("clk-"), "user_id": body["user_id"], "item_id": item, "ts": T0 + 1,
             "request_id": body["request_id"]}
    out = processor.handle("clicks", json.dumps(click).encode(), Coordinates("clicks", 0, 0, None))
    purchase = {**click, "event_id": longest("pur-"), "value": schemas.MAX_MONEY, "ts": T0 + 2}
    out.experiences += processor.handle("purchases", json.dumps(purchase).encode(),
                                        Coordinates("purchases", 0, 0, None)).experiences
    # State of the open request, with every event id it holds, encodes and decodes.
    for key, value in processor.changes(0):
        if value is not None:
            join_state.decode(key, value)
    # Let every window close: one no_click per other shown item.
    later = {**click, "event_id": "clk-late", "item_id": body["shown"][0]["item_id"], "ts": T0 + 500,
             "request_id": None}
    out.experiences += processor.handle("clicks", json.dumps({k: v for k, v in later.items() if v is not None})
                                        .encode(), Coordinates("clicks", 0, 1, None)).experiences
    for logical in ("impressions", "clicks", "purchases"):
        out.experiences += processor.reached_end(logical, 0).experiences
    out.experiences += processor.idle(0, 1e6).experiences
    kinds = {e.kind for e in out.experiences}
    assert kinds == {"click", "purchase", "no_click"}, kinds
    for experience in out.experiences:
        encoded = schemas.encode(experience)
        decoded = schemas.decode("experiences", encoded)        # raises InvalidMessage if not valid
        assert decoded.policy_version == schemas.MAX_VERSION
        assert len(encoded) <= schemas.CONTRACTS["experiences"].max_bytes
    for key, value in processor.changes(0):
        if value is not None:
            join_state.decode(key, value)


@pytest.mark.parametrize(("field", "value"), [("policy_version", schemas.MAX_VERSION + 1),
                                              ("policy_version", 2**64), ("policy_version", -1)])
def test_a_version_past_its_bound_is_refused_at_the_edge(field, value):
    body = extreme_impression()
    body[field] = value
    with pytest.raises(schemas.InvalidMessage) as refused:
        schemas.decode("impressions", json.dumps(body).encode())
    assert refused.value.reason == "schema"


def test_a_purchase_value_past_its_bound_is_refused():
    purchase = {"event_id": "p", "user_id": "u", "item_id": "i", "ts": T0, "value": 1.7e308}
    with pytest.raises(schemas.InvalidMessage):
        schemas.decode("purchases", json.dumps(purchase).encode())


def test_a_forged_policy_header_number_is_refused():
    header = {"name": "default", "version": 2**64 - 1, "created_at": T0, "checksum": "0" * 64, "total_bytes": 1,
              "n_chunks": 1}
    with pytest.raises(schemas.InvalidMessage):
        schemas.decode("policies", json.dumps(header).encode())
    header["version"] = schemas.MAX_VERSION
    assert schemas.decode("policies", json.dumps(header).encode()).version == schemas.MAX_VERSION


def test_the_longest_request_id_logs_a_valid_impression_id():
    assert len(impression_id(LONG)) <= schemas.MAX_ID
    assert impression_id("r-1") == "imp-r-1"
    assert impression_id(LONG) != impression_id(LONG[:-1] + "y")
    msgspec.convert(impression_id(LONG), schemas.Id)
