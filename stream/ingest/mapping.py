"""How rows of someone else's logs become our events: a column mapping, and presets for public datasets.

A row is one shown item. Rows that share a request (adjacent rows with the same value
in the ``request`` column and the same user) form one slate, as the scorer would have
logged it: one impression with every shown item, its position and propensity, then a
click per clicked row and a purchase per row with a value. Where the logs cannot
form a valid slate (a position or an item twice, more than ``MAX_SLATE`` rows) each row
becomes its own impression, and the report counts it.

Ids are deterministic (``<prefix>:<first row>``), so importing the same file twice
gives the same events, which the join recognises as duplicates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from stream import schemas

TIME_FORMATS = ("epoch", "epoch_ms", "iso")
FIELDS = ("user", "item", "time", "request", "position", "propensity", "click", "purchase", "candidates")


class RowError(ValueError):
    """This row cannot be turned into events; the text says which column and why."""


@dataclass(frozen=True)
class Mapping:
    """Which column holds what, and the choices the data does not make for us."""

    item: str
    time: str
    user: str | None = None
    #: epoch (seconds), epoch_ms, iso (ISO 8601; without an offset it is UTC), or a strptime pattern.
    time_format: str = "epoch"
    request: str | None = None
    position: str | None = None
    #: What the first position is called in the file (0 or 1).
    position_base: int = 0
    propensity: str | None = None
    click: str | None = None
    #: A click is a click column value of at least this (1 for 0/1 flags; 4 for MovieLens ratings).
    click_at_least: float = 1.0
    purchase: str | None = None
    #: A column of ``|``-separated candidate ids.
    candidates: str | None = None
    #: Every item of the file is a candidate of every slate (OBD: the campaign's items).
    all_items_as_candidates: bool = False
    #: Columns hashed into a user id when the logs have none (OBD).
    user_from: tuple[str, ...] = ()
    #: Columns copied into ``context.attrs``.
    attrs: tuple[str, ...] = ()
    #: Seconds after its impression that a click (and twice that, a purchase) is dated.
    click_delay: float = 1.0
    policy_version: int = 0

    def __post_init__(self) -> None:
        if self.user is None and not self.user_from:
            raise ValueError("map a user column (--map user=COLUMN); a user id is how events are keyed and joined")
        if self.position_base not in (0, 1):
            raise ValueError("--position-base is 0 or 1")
        if not (0 <= self.click_delay < 30):
            raise ValueError("the click delay must lie within the join's default click window (0-30 s)")

    def required_columns(self) -> list[str]:
        named = [self.item, self.time, self.user, self.request, self.position, self.propensity, self.click,
                 self.purchase, self.candidates, *self.user_from, *self.attrs]
        return list(dict.fromkeys(c for c in named if c is not None))

    def with_overrides(self, **changes: Any) -> Mapping:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Open Bandit Dataset (ZOZOTOWN) ``{policy}/{campaign}.csv``: one row per shown item, positions 1-3,
#: true propensities, no user id (its four hashed user features stand in for one).
OBD = Mapping(item="item_id", time="timestamp", time_format="iso", request="timestamp", position="position",
              position_base=1, propensity="propensity_score", click="click", all_items_as_candidates=True,
              user_from=("user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3"),
              attrs=("user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3"))
#: MovieLens ``ratings.csv``: every rating an impression of one item, rating >= 4 a click; no propensities.
MOVIELENS = Mapping(user="userId", item="movieId", time="timestamp", click="rating", click_at_least=4.0)
PRESETS = {"obd": OBD, "movielens": MOVIELENS}


def parse_map(pairs: Iterable[str]) -> dict[str, str]:
    """``FIELD=COLUMN`` options into a dict, with a clear error for an unknown field."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not column:
            raise ValueError(f"--map {pair!r}: expected FIELD=COLUMN")
        if name not in FIELDS:
            raise ValueError(f"--map {pair!r}: unknown field {name!r}; fields are {', '.join(FIELDS)}")
        out[name] = column
    return out


@dataclass(frozen=True)
class LoggedRow:
    number: int
    user: str
    item: str
    ts: float
    request: str | None
    position: int | None
    propensity: float
    clicked: bool
    purchase: float
    candidates: tuple[str, ...] | None
    attrs: dict[str, str]


def parse_time(value: Any, fmt: str) -> float:
    text = str(value).strip()
    if not text:
        raise RowError("empty time")
    try:
        if fmt == "epoch":
            ts = float(text)
        elif fmt == "epoch_ms":
            ts = float(text) / 1000.0
        else:
            parsed = datetime.fromisoformat(text) if fmt == "iso" else datetime.strptime(text, fmt)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            ts = parsed.timestamp()
    except (ValueError, OverflowError) as exc:
        raise RowError(f"time {text[:60]!r} is not {fmt}: {exc}") from None
    if not math.isfinite(ts) or not (0 <= ts <= schemas.MAX_TS):
        raise RowError(f"time {text[:60]!r} is {ts} epoch seconds, outside 1970-2100 (milliseconds? --time-format "
                       "epoch_ms)")
    return ts


def _cell(row: dict[str, Any], column: str) -> Any:
    try:
        value = row[column]
    except KeyError:
        raise RowError(f"no column {column!r}") from None
    if value is None:
        raise RowError(f"column {column!r} is empty")
    return value


def _text(row: dict[str, Any], column: str) -> str:
    value = _cell(row, column)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise RowError(f"column {column!r} is empty")
    return text


def _number(row: dict[str, Any], column: str) -> float:
    value = _cell(row, column)
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        text = str(value).strip().lower()
        if text in ("true", "false", "yes", "no"):
            return 1.0 if text in ("true", "yes") else 0.0
        raise RowError(f"column {column!r}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise RowError(f"column {column!r}: {number} is not finite")
    return number


def parse_row(number: int, row: dict[str, Any], m: Mapping) -> LoggedRow:
    if m.user is not None:
        user = _text(row, m.user)
    else:
        digest = hashlib.sha1("\x1f".join(_text(row, c) for c in m.user_from).encode()).hexdigest()[:16]
        user = f"u{digest}"
    position = None
    if m.position is not None:
        raw = _number(row, m.position)
        if not raw.is_integer() or not (m.position_base <= raw < m.position_base + schemas.MAX_SLATE):
            raise RowError(f"position {raw:g} is not an integer from {m.position_base} to "
                           f"{m.position_base + schemas.MAX_SLATE - 1} (--position-base {m.position_base})")
        position = int(raw) - m.position_base
    propensity = 1.0
    if m.propensity is not None:
        propensity = _number(row, m.propensity)
        if not (0 < propensity <= 1):
            raise RowError(f"propensity {propensity} is not in (0, 1]")
    purchase = _number(row, m.purchase) if m.purchase is not None else 0.0
    if not (0 <= purchase <= schemas.MAX_MONEY):
        raise RowError(f"purchase value {purchase} is not in [0, {schemas.MAX_MONEY:g}]")
    candidates = None
    if m.candidates is not None:
        candidates = tuple(c for c in _text(row, m.candidates).split("|") if c)
    out = LoggedRow(
        number=number, user=user, item=_text(row, m.item), ts=parse_time(_cell(row, m.time), m.time_format),
        request=_text(row, m.request) if m.request is not None else None, position=position, propensity=propensity,
        clicked=m.click is not None and _number(row, m.click) >= m.click_at_least, purchase=purchase,
        candidates=candidates, attrs={c: _text(row, c)[:256] for c in m.attrs})
    for name, value in (("user", out.user), ("item", out.item)):
        if len(value) > schemas.MAX_ID:
            raise RowError(f"{name} id is {len(value)} characters; the limit is {schemas.MAX_ID}")
    return out


@dataclass
class Slate:
    rows: list[LoggedRow]
    split: bool = False     # rows that claimed one request but could not form a valid slate


def slates(rows: Iterable[LoggedRow], grouped: bool) -> Iterator[Slate]:
    """Adjacent rows of one request and user as one slate (each row alone when ``grouped`` is off)."""
    current: list[LoggedRow] = []
    for row in rows:
        if current and (not grouped or (row.request, row.user) != (current[0].request, current[0].user)):
            yield from _valid(current)
            current = []
        current.append(row)
    if current:
        yield from _valid(current)


def _valid(rows: list[LoggedRow]) -> Iterator[Slate]:
    if len(rows) == 1:
        yield Slate(rows)
        return
    positions = [r.position for r in rows]
    items = [r.item for r in rows]
    if (len(rows) <= schemas.MAX_SLATE and len(set(items)) == len(items)
            and (None in positions or len(set(positions)) == len(positions))
            and (None not in positions or all(p is None for p in positions))):
        yield Slate(rows)
        return
    for row in rows:
        yield Slate([row], split=True)


@dataclass
class SlateEvents:
    impression: dict[str, Any]
    clicks: list[dict[str, Any]] = field(default_factory=list)
    purchases: list[dict[str, Any]] = field(default_factory=list)


def slate_events(slate: Slate, prefix: str, m: Mapping, all_items: list[str] | None) -> SlateEvents:
    """The impression, clicks and purchases of one slate, as contract-shaped dicts (validated when sent)."""
    first = slate.rows[0]
    request_id = f"{prefix}:{first.number}"
    ts = min(r.ts for r in slate.rows)
    shown = [{"item_id": r.item, "position": r.position if r.position is not None else i,
              "propensity": r.propensity} for i, r in enumerate(slate.rows)]
    if len(slate.rows) == 1 and first.position is None:
        shown[0]["position"] = 0
    impression: dict[str, Any] = {"event_id": f"{request_id}:imp", "request_id": request_id, "user_id": first.user,
                                  "ts": ts, "policy_version": m.policy_version, "shown": shown}
    if first.attrs:
        impression["context"] = {"attrs": first.attrs}
    candidates = all_items if all_items is not None else first.candidates
    if candidates:
        impression["candidates"] = list(candidates)
    out = SlateEvents(impression)
    for r in slate.rows:
        if r.clicked:
            out.clicks.append({"event_id": f"{request_id}:{r.number}:click", "request_id": request_id,
                               "user_id": r.user, "item_id": r.item, "ts": ts + m.click_delay})
        if r.purchase > 0:
            out.purchases.append({"event_id": f"{request_id}:{r.number}:purchase", "request_id": request_id,
                                  "user_id": r.user, "item_id": r.item, "value": r.purchase,
                                  "ts": ts + 2 * m.click_delay})
    return out
