"""Log files as rows: CSV (pandas' nameless index column), JSON lines and Parquet, numbered as people count."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream import schemas
from stream.ingest.experience_files import read_experiences, write_experiences
from stream.ingest.tables import TableError, columns, infer_format, read_rows


def test_csv_jsonl_and_parquet_give_the_same_rows(tmp_path):
    rows = [{"user": "u1", "item": "a", "t": "10"}, {"user": "u2", "item": "b", "t": "11"}]
    (tmp_path / "log.csv").write_text(",user,item,t\n0,u1,a,10\n1,u2,b,11\n2,u3\n")
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n[1, 2]\n{"broken\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "log.parquet")
    from_csv = list(read_rows(tmp_path / "log.csv"))
    assert [r for _, r in from_csv[:2]] == [{"_column_0": str(i), **r} for i, r in enumerate(rows)]
    assert from_csv[2] == (3, "2 values for 4 columns")
    from_jsonl = list(read_rows(tmp_path / "log.jsonl"))
    assert [r for _, r in from_jsonl[:2]] == rows
    assert from_jsonl[2] == (3, "a row must be a JSON object") and from_jsonl[3][1].startswith("not valid JSON")
    assert list(read_rows(tmp_path / "log.parquet")) == [(1, rows[0]), (2, rows[1])]
    assert columns(tmp_path / "log.parquet") == ["user", "item", "t"]
    with pytest.raises(TableError, match="--format"):
        infer_format(tmp_path / "log.txt")


def test_experiences_round_trip_through_parquet_and_jsonl(tmp_path):
    e = schemas.Experience(
        event_id="r1:a:click", request_id="r1", user_id="u", action="a", position=0, propensity=0.25, reward=1.0,
        reward_parts=schemas.RewardParts(click=1.0), kind="click", policy_version=3, ts=100.0,
        context=schemas.Context(features=[0.5], attrs={"country": "fr"}), candidates=["a", "b"])
    bare = schemas.Experience(
        event_id="r2:b:no_click", request_id="r2", user_id="v", action="b", position=1, propensity=0.5, reward=0.0,
        reward_parts=schemas.RewardParts(), kind="no_click", policy_version=3, ts=101.0)
    for name in ("x.parquet", "x.jsonl"):
        assert write_experiences([e, bare], tmp_path / name, name.split(".")[1]) == 2
        assert read_experiences(tmp_path / name) == ([e, bare], 0)
