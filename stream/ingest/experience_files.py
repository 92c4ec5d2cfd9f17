"""Experiences to and from files: JSON lines (the topic's own bytes) or Parquet (flat columns).

Parquet keeps one column per scalar field; the nested parts are flattened
(``reward_click``, ``reward_purchase``, ``reward_value``), the context is a JSON
string (its attribute names differ per row) and candidates a list column. Reading
either back validates every record against the ``experiences`` contract.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from stream import schemas
from stream.ingest.tables import read_rows

_SCALARS = ("event_id", "request_id", "user_id", "action", "position", "propensity", "reward", "kind",
            "policy_version", "ts", "arm", "policy_name")


def flat_row(e: schemas.Experience) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(e, name) for name in _SCALARS}
    row.update(reward_click=e.reward_parts.click, reward_purchase=e.reward_parts.purchase,
               reward_value=e.reward_parts.value, context=schemas.encode(e.context).decode(),
               candidates=e.candidates)
    return row


def from_flat_row(row: dict[str, Any]) -> schemas.Experience:
    """A validated experience from a Parquet row (``InvalidMessage`` if it breaks the contract)."""
    payload = {name: row.get(name) for name in _SCALARS}
    payload["reward_parts"] = {"click": row.get("reward_click", 0.0), "purchase": row.get("reward_purchase", 0.0),
                               "value": row.get("reward_value", 0.0)}
    payload["context"] = json.loads(row["context"]) if row.get("context") else {}
    if row.get("candidates") is not None:
        payload["candidates"] = list(row["candidates"])
    return schemas.decode("experiences", msgspec.json.encode(payload))


def write_experiences(experiences: Iterable[schemas.Experience], out: Path | None, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [flat_row(e) for e in experiences]
        pq.write_table(pa.Table.from_pylist(rows), out)
        return len(rows)
    count = 0
    fh = out.open("wb") if out is not None else sys.stdout.buffer
    try:
        for e in experiences:
            fh.write(schemas.encode(e) + b"\n")
            count += 1
    finally:
        if out is not None:
            fh.close()
        else:
            fh.flush()
    return count


def read_experiences(path: Path, fmt: str | None = None) -> tuple[list[schemas.Experience], int]:
    """(valid experiences, invalid rows skipped) from a jsonl or Parquet file."""
    good, bad = [], 0
    for _, row in read_rows(path, fmt):
        if isinstance(row, str):
            bad += 1
            continue
        try:
            if "reward_parts" in row:    # a JSON line: the topic's own shape
                good.append(schemas.decode("experiences", msgspec.json.encode(row)))
            else:
                good.append(from_flat_row(row))
        except (schemas.InvalidMessage, ValueError, TypeError):
            bad += 1
    return good, bad
