"""Rows of foreign logs into our events: presets, time formats, slates, and the rows refused."""

from __future__ import annotations

import msgspec
import pytest

from stream import schemas
from stream.ingest.mapping import MOVIELENS, OBD, Mapping, RowError, parse_map, parse_row, parse_time, slate_events, slates
from stream.learner.log_evaluation import shown_items, unevaluable


def obd_row(ts: str, item: int, position: int, click: int = 0, user: str = "a") -> dict:
    return {"timestamp": ts, "item_id": str(item), "position": str(position), "click": str(click),
            "propensity_score": "0.0125", **{f"user_feature_{k}": f"{user}{k}" for k in range(4)}}


def test_time_formats_and_their_refusals():
    assert parse_time("2019-11-24 00:00:17.147000+00:00", "iso") == pytest.approx(1574553617.147)
    assert parse_time("2019-11-24T00:00:17", "iso") == 1574553617.0          # no offset: UTC
    assert parse_time("1574553617147", "epoch_ms") == pytest.approx(1574553617.147)
    assert parse_time("24/11/2019 00:00", "%d/%m/%Y %H:%M") == 1574553600.0
    with pytest.raises(RowError, match="milliseconds"):
        parse_time("1574553617147", "epoch")
    with pytest.raises(RowError, match="is not iso"):
        parse_time("yesterday", "iso")


def test_obd_rows_of_one_timestamp_form_one_slate_with_zero_based_positions():
    rows = [parse_row(n, obd_row("2019-11-24 00:00:01+00:00", item, pos, click=int(item == 7)), OBD)
            for n, (item, pos) in enumerate([(3, 1), (7, 2), (5, 3)], start=1)]
    rows.append(parse_row(4, obd_row("2019-11-24 00:00:02+00:00", 3, 1, user="b"), OBD))
    [first, second] = list(slates(rows, grouped=True))
    events = slate_events(first, "all", OBD, ["3", "5", "7"])
    assert [(s["item_id"], s["position"]) for s in events.impression["shown"]] == [("3", 0), ("7", 1), ("5", 2)]
    assert events.impression["candidates"] == ["3", "5", "7"] and events.impression["request_id"] == "all:1"
    assert [c["item_id"] for c in events.clicks] == ["7"] and events.clicks[0]["ts"] == events.impression["ts"] + 1
    assert rows[0].user == rows[1].user != rows[3].user and len(second.rows) == 1
    schemas.decode("impressions", msgspec.json.encode(events.impression))   # the contract accepts it


def test_rows_that_cannot_form_a_slate_become_single_impressions():
    rows = [parse_row(n, obd_row("2019-11-24 00:00:01+00:00", 3, 1), OBD) for n in (1, 2)]   # one position twice
    out = list(slates(rows, grouped=True))
    assert [len(s.rows) for s in out] == [1, 1] and all(s.split for s in out)


def test_movielens_rating_of_four_is_a_click_and_bad_rows_say_why():
    row = parse_row(1, {"userId": "2", "movieId": "10", "rating": "4.0", "timestamp": "835355493"}, MOVIELENS)
    assert (row.user, row.item, row.clicked, row.propensity, row.position) == ("2", "10", True, 1.0, None)
    with pytest.raises(RowError, match="'rating'.*not a number"):
        parse_row(2, {"userId": "2", "movieId": "10", "rating": "x", "timestamp": "835355493"}, MOVIELENS)
    with pytest.raises(RowError, match="no column 'timestamp'"):
        parse_row(3, {"userId": "2", "movieId": "10", "rating": "4"}, MOVIELENS)
    with pytest.raises(RowError, match="propensity"):
        parse_row(4, obd_row("2019-11-24 00:00:01+00:00", 3, 1) | {"propensity_score": "0"}, OBD)
    with pytest.raises(RowError, match="position 0"):
        parse_row(5, obd_row("2019-11-24 00:00:01+00:00", 3, 0), OBD)


def test_map_options_and_a_mapping_without_user_are_refused_clearly():
    assert parse_map(["user=uid", "item=sku"]) == {"user": "uid", "item": "sku"}
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        parse_map(["colour=red"])
    with pytest.raises(ValueError, match="FIELD=COLUMN"):
        parse_map(["user"])
    with pytest.raises(ValueError, match="map a user column"):
        Mapping(item="sku", time="t")


def experience(request: str, item: str, kind: str, reward: float, position: int = 0, propensity: float = 0.5,
               candidates: list[str] | None = None) -> schemas.Experience:
    return schemas.Experience(
        event_id=f"{request}:{item}:{kind}", request_id=request, user_id="u", action=item, position=position,
        propensity=propensity, reward=reward, reward_parts=schemas.RewardParts(click=reward), kind=kind,
        policy_version=0, ts=1.0, candidates=candidates)


def test_purchases_add_to_their_decision_and_logs_without_candidates_or_propensities_are_refused():
    logs = [experience("r1", "a", "click", 1.0), experience("r1", "a", "purchase", 2.0),
            experience("r1", "a", "click", 1.0), experience("r2", "b", "no_click", 0.0)]
    shown = shown_items(logs)
    assert sorted((e.request_id, e.reward) for e in shown) == [("r1", 3.0), ("r2", 0.0)]
    assert "lack candidates" in unevaluable(shown, [])
    certain = [experience("r3", "a", "click", 1.0, propensity=1.0, candidates=["a", "b"])]
    assert "lack propensities" in unevaluable(certain, certain)
    assert unevaluable([], []).startswith("no experiences")
