"""Rows of a log file as dictionaries, whatever its format: CSV, JSON lines or Parquet.

One reader per format, all streaming (a file larger than memory is read in pieces),
each row numbered from 1 as a person counts lines (a CSV header is not a row), so a
refusal can point at the row that caused it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = ("csv", "jsonl", "parquet")


class TableError(ValueError):
    """The file cannot be read as a table at all (not a row-level problem)."""


def infer_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".jsonl" in suffixes or ".ndjson" in suffixes or ".json" in suffixes:
        return "jsonl"
    if ".csv" in suffixes or ".tsv" in suffixes:
        return "csv"
    raise TableError(f"cannot tell the format of {path.name} from its name; pass --format csv|jsonl|parquet")


def read_rows(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, row) pairs; a row that cannot be parsed comes back as its error text instead."""
    fmt = fmt or infer_format(path)
    if fmt == "csv":
        yield from _csv_rows(path)
    elif fmt == "jsonl":
        yield from _jsonl_rows(path)
    elif fmt == "parquet":
        yield from _parquet_rows(path)
    else:
        raise TableError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def columns(path: Path, fmt: str | None = None) -> list[str]:
    """The column names, to check a mapping before any row is sent."""
    fmt = fmt or infer_format(path)
    if fmt == "parquet":
        return list(_parquet_file(path).schema_arrow.names)
    for _, row in read_rows(path, fmt):
        if isinstance(row, dict):
            return list(row)
    return []


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        # pandas writes its index as a nameless first column (OBD's files have one).
        header = [name if name else f"_column_{i}" for i, name in enumerate(header)]
        for number, values in enumerate(reader, start=1):
            if len(values) != len(header):
                yield number, f"{len(values)} values for {len(header)} columns"
                continue
            yield number, dict(zip(header, values))


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield number, f"not valid JSON: {exc}"
                continue
            yield (number, row) if isinstance(row, dict) else (number, "a row must be a JSON object")


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:   # pragma: no cover - pyarrow is a dependency
        raise TableError("reading Parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise TableError(f"{path.name} is not a readable Parquet file: {exc}") from exc


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    number = 0
    for batch in _parquet_file(path).iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            number += 1
            yield number, row
