"""``recsys-stream import``: log files in, impressions/clicks/purchases/items out, as the scorer would log them.

Two passes over each file: the first counts rows (for the progress bar) and collects
the item ids (the candidate set of presets that need one); the second maps rows to
events (``stream/ingest/mapping.py``) and sends each through the same validation as
``ingest``, keyed by user so the join finds them on one partition. A row that cannot
be mapped, or an event its contract refuses, goes to the dead-letter topic with the
file's row number; nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream import schemas
from stream.config import Settings
from stream.ingest.mapping import LoggedRow, Mapping, RowError, parse_row, slate_events, slates
from stream.ingest.tables import read_rows
from stream.kafka.producer import DeliveryError, EventProducer
from stream.ops.metrics import INGEST_LINES


@dataclass
class ImportReport:
    files: list[str]
    dry_run: bool
    rows: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    items: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    split_slates: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    propensities: str = "logged"
    candidates: str = "none"
    seconds: float = 0.0
    delivery_failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_per_second"] = round(self.rows / self.seconds, 1) if self.seconds else None
        return out


def id_prefix(path: Path) -> str:
    """A short, id-safe stem of the file name (request ids are ``<prefix>:<row>``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.name.split(".")[0])[:40] or "log"


def scan(paths: list[Path], mapping: Mapping, fmt: str | None) -> tuple[int, list[str]]:
    """(rows, distinct item ids in order of appearance): the first pass."""
    rows = 0
    items: dict[str, None] = {}
    for path in paths:
        for _, row in read_rows(path, fmt):
            rows += 1
            if isinstance(row, dict) and row.get(mapping.item) is not None:
                value = row[mapping.item]
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                items.setdefault(str(value).strip(), None)
    return rows, [i for i in items if i]


class _Sink:
    """Validates each event; sends it (or, in a dry run, only counts it); refused ones are dead-lettered."""

    def __init__(self, out: EventProducer | None, report: ImportReport) -> None:
        self.out = out
        self.report = report

    def refuse(self, source: str, raw: bytes, reason: str, error: str, line: int,
               logical: str = "impressions") -> None:
        """A row that cannot be mapped counts against ``impressions`` (a row is a shown item)."""
        self.report.dead_lettered += 1
        self.report.reasons[reason] = self.report.reasons.get(reason, 0) + 1
        INGEST_LINES.labels(topic=logical, status="dead_lettered").inc()
        if self.out is not None:
            self.out.dead_letters.send(source, raw, reason, error, line=line)

    def send(self, logical: str, payload: dict[str, Any], line: int, source: str) -> bool:
        raw = json.dumps(payload, separators=(",", ":")).encode()
        try:
            schemas.decode(logical, raw)
        except schemas.InvalidMessage as exc:
            self.refuse(source, raw, exc.reason, f"{logical}: {exc.detail}", line, logical)
            return False
        if self.out is not None:
            self.out.send_raw(logical, raw, line=line)
        INGEST_LINES.labels(topic=logical, status="produced").inc()
        return True


def import_logs(
    settings: Settings,
    paths: list[Path],
    mapping: Mapping,
    *,
    fmt: str | None = None,
    items_file: Path | None = None,
    prefix: str | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,   # (rows done, rows in all)
) -> ImportReport:
    """Import every file; delivery failures are listed in the report (the caller exits non-zero)."""
    for path in [*paths, *([items_file] if items_file else [])]:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    started = time.monotonic()
    report = ImportReport(files=[str(p) for p in paths], dry_run=dry_run,
                          propensities="logged" if mapping.propensity else "absent: logged as 1.0 (no OPE possible)")
    total, items = scan(paths, mapping, fmt)
    all_items = None
    if mapping.all_items_as_candidates:
        if len(items) > schemas.MAX_CANDIDATES:
            raise ValueError(f"the files hold {len(items)} distinct items; a slate's candidates are limited to "
                             f"{schemas.MAX_CANDIDATES}")
        all_items = sorted(items, key=lambda i: (len(i), i))
        report.candidates = f"all {len(all_items)} items of the files"
    elif mapping.candidates:
        report.candidates = f"column {mapping.candidates!r}"
    out = None if dry_run else EventProducer(settings, component="import")
    sink = _Sink(out, report)
    try:
        if items_file is not None:
            _import_items(items_file, sink, report, fmt)
        done = 0
        for path in paths:
            source = f"file:{path.name}"
            name = prefix if prefix and len(paths) == 1 else (f"{prefix}-{id_prefix(path)}" if prefix
                                                              else id_prefix(path))

            def parsed(path: Path = path, source: str = source) -> Iterator[LoggedRow]:
                nonlocal done
                for number, row in read_rows(path, fmt):
                    done += 1
                    report.rows += 1
                    if progress is not None and done % 1000 == 0:
                        progress(done, total)
                    if isinstance(row, str):
                        sink.refuse(source, b"", "malformed_json", f"row {number}: {row}", number)
                        continue
                    try:
                        logged = parse_row(number, row, mapping)
                    except RowError as exc:
                        sink.refuse(source, json.dumps(row, default=str).encode(), "schema",
                                    f"row {number}: {exc}", number)
                        continue
                    report.first_ts = logged.ts if report.first_ts is None else min(report.first_ts, logged.ts)
                    report.last_ts = logged.ts if report.last_ts is None else max(report.last_ts, logged.ts)
                    yield logged

            for slate in slates(parsed(), grouped=mapping.request is not None):
                report.split_slates += slate.split
                events = slate_events(slate, name, mapping, all_items)
                line = slate.rows[0].number
                if not sink.send("impressions", events.impression, line, source):
                    continue
                report.impressions += 1
                report.clicks += sum(sink.send("clicks", c, line, source) for c in events.clicks)
                report.purchases += sum(sink.send("purchases", p, line, source) for p in events.purchases)
        if progress is not None:
            progress(done, total)
        if out is not None:
            try:
                out.flush()
            except DeliveryError as exc:
                report.delivery_failures = exc.failures or [str(exc)]
    finally:
        report.seconds = time.monotonic() - started
        if out is not None:
            out.release()
    return report


def _import_items(path: Path, sink: _Sink, report: ImportReport, fmt: str | None) -> None:
    """A catalogue file: ``item_id,title[,description,category,price]`` or MovieLens ``movieId,title,genres``.

    Items are dated 1970-01-01: a catalogue entry has no time of its own in these files."""
    stamp = 0.0
    source = f"file:{path.name}"
    for number, row in read_rows(path, fmt):
        if isinstance(row, str):
            sink.refuse(source, b"", "malformed_json", f"row {number}: {row}", number)
            continue
        item_id = row.get("item_id", row.get("movieId"))
        genres = str(row.get("genres", "")).replace("|", ", ")
        payload: dict[str, Any] = {
            "item_id": str(item_id).strip() if item_id is not None else "",
            "title": str(row.get("title", "")), "ts": stamp,
            "description": str(row.get("description") or (f"Genres: {genres}" if genres else "")),
            "category": str(row.get("category") or genres.split(", ")[0])[:128],
        }
        if row.get("price") not in (None, ""):
            try:
                payload["price"] = float(row["price"])
            except (TypeError, ValueError):
                payload["price"] = row["price"]   # refused by the contract below, with its reason
        report.items += sink.send("items", payload, number, source)

