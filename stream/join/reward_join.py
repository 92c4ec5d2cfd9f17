"""The reward join as a pure, event-time state machine (no Kafka, no clock of its own).

Impressions open a window per shown item; clicks and purchases are matched to it by
``request_id``, or by user and item within the window when a click carries none.
What comes out are experiences with deterministic ids (``request:item:kind``), so
re-processing the same input after a crash produces the same records and any
idempotent sink ignores the repeats:

- a click emits a ``click`` experience at once (freshness);
- a shown item with no click becomes a ``no_click`` experience when its click
  window (plus grace) has passed the watermark;
- a purchase emits a ``purchase`` follow-up carrying only the purchase part, so no
  reward part is ever counted twice.

Duplicates (same event_id) are ignored. A click or purchase that can be matched to
no impression is held for the grace period (it may have overtaken its impression)
and then rejected as an orphan; a click that arrives after its window closed (its
no_click already emitted) is rejected as late. ``processor.py`` feeds this class one
partition's events and moves its watermark, driven by the batch engine (``worker.py``, the
default) or the faust engine (``faust_engine.py``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Literal

from stream.schemas import Click, Context, Experience, Impression, Purchase, RewardParts

#: What a click or purchase is to the join; an experience adds the window's no_click.
InputKind = Literal["click", "purchase"]

#: Seconds past the purchase window and grace that event ids stay remembered by default.
DEDUPE_MARGIN = 60.0
#: The reward parts of a click and of no click, shared (frozen) by every experience that carries them.
CLICKED = RewardParts(click=1.0)
NOTHING = RewardParts()


@dataclass(frozen=True)
class JoinConfig:
    """Windows are in event-time seconds."""

    click_window: float = 30.0
    purchase_window: float = 3600.0
    grace: float = 5.0
    click_weight: float = 1.0
    purchase_weight: float = 2.0
    value_weight: float = 0.0
    #: Event-time seconds an event id is remembered for de-duplication after its request is forgotten
    #: (and an orphan's id after it was refused): what the join holds in memory and in ``join-state``
    #: grows with traffic over this horizon, then levels off. None: the purchase window + grace +
    #: ``DEDUPE_MARGIN``. A repeat older than that is not paid again either: its request is gone, so
    #: it is dead-lettered as an orphan (an impression repeated that late re-emits experiences with
    #: the same ids, which the replay store and the learner drop).
    dedupe_horizon: float | None = None
    #: How far ahead of the worker's clock an event may be dated: one dated further would move
    #: the partition's event time ahead and close every window early (dead-lettered as ``future``).
    max_future: float = 300.0

    def __post_init__(self) -> None:
        # Rewards are gains: a negative weight would make a click worth less than being ignored.
        for name in ("click_window", "purchase_window", "grace", "click_weight", "purchase_weight", "value_weight",
                     "max_future"):
            if getattr(self, name) < 0:
                raise ValueError(f"JoinConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.dedupe_horizon is not None and self.dedupe_horizon < self.purchase_window + self.grace:
            raise ValueError(f"the dedupe horizon ({self.dedupe_horizon:g}s) must cover the purchase window plus "
                             f"grace ({self.purchase_window + self.grace:g}s)")

    @property
    def horizon(self) -> float:
        """The dedupe horizon in effect (see ``dedupe_horizon``)."""
        if self.dedupe_horizon is not None:
            return self.dedupe_horizon
        return self.purchase_window + self.grace + DEDUPE_MARGIN


@dataclass(frozen=True)
class Rejected:
    """An input the join could not use, with a low-cardinality reason."""

    event: Click | Purchase
    kind: InputKind
    reason: Literal["orphan", "not_shown", "late"]
    detail: str


@dataclass
class OpenRequest:
    """One impression the join still holds: its slots and which reward parts it has paid out."""

    impression: Impression
    slots: dict[str, tuple[int, float]]     # item -> (position, propensity)
    clicked: set[str] = field(default_factory=set)
    purchased: set[str] = field(default_factory=set)
    closed: bool = False                      # no_click experiences emitted
    events: list[str] = field(default_factory=list)  # event ids joined to it (restored into the dedupe set)


@dataclass(frozen=True)
class Forgotten:
    """A request past its purchase window: only its event ids live on, to deduplicate re-reads."""

    ts: float
    events: list[str]
    request_id: str = ""


@dataclass
class JoinOutput:
    experiences: list[Experience] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0
    #: Event ids of parked clicks/purchases that stopped waiting (matched at last).
    released: list[str] = field(default_factory=list)
    #: Event ids of clicks/purchases that were parked by this call.
    parked: list[str] = field(default_factory=list)

    def extend(self, other: JoinOutput) -> None:
        self.experiences.extend(other.experiences)
        self.rejected.extend(other.rejected)
        self.duplicates += other.duplicates
        self.released.extend(other.released)
        self.parked.extend(other.parked)


class RewardJoin:
    def __init__(self, config: JoinConfig | None = None, checkpointed: bool = False) -> None:
        self.config = config or JoinConfig()
        self.watermark = float("-inf")
        self._open: dict[str, OpenRequest] = {}                       # request_id -> state
        # user -> open request ids, oldest first: how a click without a request_id finds its impression.
        # Per user, not per (user, item): one entry per impression instead of one per shown item (that
        # index alone took ~9% of the join's time).
        self._by_user: dict[str, list[str]] = {}
        self._deadlines: list[tuple[float, int, str, str]] = []  # (time, order, what, request_id)
        self._seen: dict[str, float] = {}                       # event_id -> ts
        self._seen_queue: list[tuple[float, str]] = []
        # Unmatched clicks/purchases awaiting their impression until grace ends, indexed
        # by what an arriving impression can match them on (so arrival is O(slate)).
        self._parked: dict[int, Click | Purchase] = {}
        self._parked_by_request: dict[str, list[int]] = {}
        self._parked_by_user_item: dict[tuple[str, str], list[int]] = {}
        self._parked_deadlines: list[tuple[float, int]] = []
        self._order = 0
        # What changed since the last ``take_changes()``: the durable copy of this state
        # (the join worker's changelog) is written from it.
        self._changed_requests: set[str] = set()
        # Requests forgotten (their event ids still deduplicate, and their id cannot open a request
        # again) until they leave the dedupe horizon, in the order they do.
        self._gone: set[str] = set()
        self._forgotten_expiry: list[tuple[float, str]] = []
        # Forgotten since the last ``take_changes()``: a request's changelog record stays as it was
        # written while it was open (a restore sees from the watermark that it is forgotten), unless
        # it changed in the same checkpoint, when it is written from here.
        self._leaving: dict[str, OpenRequest] = {}
        # Past the dedupe horizon since the last ``take_changes()``: their records become tombstones.
        self._expired: list[str] = []
        # Forgotten requests restored from a changelog written before they stayed under their request's
        # key (``join_state.FORGOTTEN``): their own key is tombstoned when they expire.
        self._legacy_forgotten: set[str] = set()
        # Orphans are remembered the same way (event id -> ts; None once past the horizon).
        self._rejected: dict[str, float | None] = {}
        self._rejected_expiry: list[tuple[float, str]] = []
        self._changed_parked: dict[str, Click | Purchase | None] = {}
        # Event time as of the last ``take_changes()`` (a checkpoint) when the state is checkpointed (None:
        # it is not; ids expire by the current event time). A crash re-reads everything since the last
        # commit, which can span much event time (a backlog batch): ids expire only below this, so a
        # re-read input is still recognised as a repeat.
        self._checkpointed: float | None = float("-inf") if checkpointed else None

    # -- bookkeeping -----------------------------------------------------------------
    @property
    def _durable(self) -> bool:
        """Only a checkpointed join records what changed: nothing takes the changes of one that is not
        (the faust engine), and they grew with traffic there."""
        return self._checkpointed is not None

    @property
    def open_requests(self) -> int:
        return len(self._open)

    @property
    def parked(self) -> int:
        return len(self._parked)

    def parked_event_ids(self) -> list[str]:
        return [event.event_id for event in self._parked.values()]

    def _schedule(self, when: float, what: str, request_id: str) -> None:
        self._order += 1
        heapq.heappush(self._deadlines, (when, self._order, what, request_id))

    def _duplicate(self, event_id: str, ts: float) -> bool:
        if event_id in self._seen:
            return True
        self._seen[event_id] = ts
        heapq.heappush(self._seen_queue, (ts, event_id))
        return False

    # -- inputs ------------------------------------------------------------------------
    def impression(self, imp: Impression) -> JoinOutput:
        out = JoinOutput()
        if self._duplicate(imp.event_id, imp.ts) or imp.request_id in self._open or imp.request_id in self._gone:
            out.duplicates += 1
            return out
        state = OpenRequest(imp, {s.item_id: (s.position, s.propensity) for s in imp.shown}, events=[imp.event_id])
        self._open[imp.request_id] = state
        if self._durable:
            self._changed_requests.add(imp.request_id)
        self._index(imp)
        self._schedule(imp.ts + self.config.click_window + self.config.grace, "close", imp.request_id)
        self._schedule(imp.ts + self.config.purchase_window + self.config.grace, "forget", imp.request_id)
        if not self._parked:     # the usual case: nothing overtook any impression
            return out
        # Clicks or purchases that overtook this impression can be matched now.
        waiting = set(self._parked_by_request.pop(imp.request_id, ()))
        for item in state.slots:
            waiting.update(self._parked_by_user_item.pop((imp.user_id, item), ()))
        for order in sorted(waiting, key=lambda o: (self._parked[o].ts, o) if o in self._parked else (0.0, o)):
            event = self._parked.pop(order, None)
            if event is not None:
                out.released.append(event.event_id)
                if self._durable:
                    self._changed_parked[event.event_id] = None
                out.extend(self._match(event, park=True))
        return out

    def _park(self, event: Click | Purchase) -> None:
        self._order += 1
        self._parked[self._order] = event
        if event.request_id is not None:
            self._parked_by_request.setdefault(event.request_id, []).append(self._order)
        else:
            self._parked_by_user_item.setdefault((event.user_id, event.item_id), []).append(self._order)
        heapq.heappush(self._parked_deadlines, (event.ts + self.config.grace, self._order))
        if self._durable:
            self._changed_parked[event.event_id] = event

    def click(self, click: Click) -> JoinOutput:
        if self._duplicate(click.event_id, click.ts):
            return JoinOutput(duplicates=1)
        return self._match(click, park=True)

    def purchase(self, purchase: Purchase) -> JoinOutput:
        if self._duplicate(purchase.event_id, purchase.ts):
            return JoinOutput(duplicates=1)
        return self._match(purchase, park=True)

    def _find(self, event: Click | Purchase) -> OpenRequest | None:
        if event.request_id is not None:
            return self._open.get(event.request_id)
        window = self.config.click_window if isinstance(event, Click) else self.config.purchase_window
        item = event.item_id
        for request_id in reversed(self._by_user.get(event.user_id, ())):   # the latest that could have led to it
            state = self._open.get(request_id)
            if state and item in state.slots \
                    and state.impression.ts <= event.ts <= state.impression.ts + window + self.config.grace:
                return state
        return None

    def _index(self, imp: Impression) -> None:
        ids = self._by_user.get(imp.user_id)
        if ids is None:
            self._by_user[imp.user_id] = [imp.request_id]
        else:
            ids.append(imp.request_id)

    def _match(self, event: Click | Purchase, park: bool) -> JoinOutput:
        out = JoinOutput()
        kind: InputKind = "click" if isinstance(event, Click) else "purchase"
        state = self._find(event)
        if state is None:
            if park and event.ts + self.config.grace > self.watermark:
                self._park(event)
                out.parked.append(event.event_id)
            else:
                self._reject_orphan(event, kind, out)
            return out
        # Whatever happens next, the event belongs to this request now: its id is kept with the
        # request so that a re-read after a crash is recognised as a repeat, even once forgotten.
        state.events.append(event.event_id)
        if self._durable:
            self._changed_requests.add(state.impression.request_id)
        if event.item_id not in state.slots:
            out.rejected.append(Rejected(event, kind, "not_shown",
                                         f"item {event.item_id} was not shown in request {state.impression.request_id}"))
            return out
        item = event.item_id
        paid = state.clicked if kind == "click" else state.purchased
        if item in paid:
            out.duplicates += 1      # a second click (or purchase) of the same shown item earns nothing more
            return out
        if kind == "click" and state.closed:
            # Its no_click is already out: paying now would contradict it, so it is dead-lettered.
            close_ts = state.impression.ts + self.config.click_window
            out.rejected.append(Rejected(event, kind, "late", f"click on {item} at {event.ts:.3f} arrived after the "
                                         f"click window of request {state.impression.request_id} closed "
                                         f"(window end {close_ts:.3f} + grace {self.config.grace:g}s)"))
            return out
        paid.add(item)
        if isinstance(event, Click):
            out.experiences.append(self._experience(state, item, "click", event.ts))
        else:
            out.experiences.append(self._experience(state, item, "purchase", event.ts, event.value))
        return out

    # -- time ------------------------------------------------------------------------------
    def advance(self, watermark: float) -> JoinOutput:
        """Move event time forward: close click windows, reject expired orphans, forget old state."""
        out = JoinOutput()
        if watermark <= self.watermark:
            return out
        self.watermark = watermark
        while self._parked_deadlines and self._parked_deadlines[0][0] <= watermark:
            _, order = heapq.heappop(self._parked_deadlines)
            event = self._parked.pop(order, None)
            if event is None:
                continue  # matched in the meantime
            index: dict = self._parked_by_request if event.request_id is not None else self._parked_by_user_item
            key = event.request_id if event.request_id is not None else (event.user_id, event.item_id)
            orders = index.get(key)
            if orders is not None:
                orders.remove(order)
                if not orders:
                    del index[key]
            self._reject_orphan(event, "click" if isinstance(event, Click) else "purchase", out)
            if self._durable:
                self._changed_parked[event.event_id] = None
        while self._deadlines and self._deadlines[0][0] <= watermark:
            _, _, what, request_id = heapq.heappop(self._deadlines)
            state = self._open.get(request_id)
            if state is None:
                continue
            if what == "close" and not state.closed:
                # Not a change to write: a restore derives it from the checkpointed watermark (``restore``).
                state.closed = True
                close_ts = state.impression.ts + self.config.click_window
                for item in sorted(state.slots, key=lambda i: state.slots[i][0]):
                    if item not in state.clicked:
                        out.experiences.append(self._experience(state, item, "no_click", close_ts))
            elif what == "forget":
                self._forget(state)
        settled = watermark if self._checkpointed is None else min(watermark, self._checkpointed)
        horizon = settled - self.config.horizon
        while self._rejected_expiry and self._rejected_expiry[0][0] < horizon:
            _, event_id = heapq.heappop(self._rejected_expiry)
            if self._durable:
                self._rejected[event_id] = None
        while self._forgotten_expiry and self._forgotten_expiry[0][0] < horizon:
            _, request_id = heapq.heappop(self._forgotten_expiry)
            self._gone.discard(request_id)
            self._leaving.pop(request_id, None)
            self._changed_requests.discard(request_id)
            if self._durable:
                self._expired.append(request_id)
        while self._seen_queue and self._seen_queue[0][0] < horizon:
            _, event_id = heapq.heappop(self._seen_queue)
            self._seen.pop(event_id, None)
        return out

    def finish(self) -> JoinOutput:
        """The input has ended for good (a backfill): move event time to the last pending deadline, so
        every click and purchase window closes and every parked event is judged, as if time had run on."""
        ends = [when for when, *_ in self._deadlines] + [when for when, _ in self._parked_deadlines]
        return self.advance(max(ends)) if ends else JoinOutput()

    def _reject_orphan(self, event: Click | Purchase, kind: InputKind, out: JoinOutput) -> None:
        out.rejected.append(Rejected(event, kind, "orphan", _orphan_detail(event)))
        if self._durable:
            self._rejected[event.event_id] = event.ts
        heapq.heappush(self._rejected_expiry, (event.ts, event.event_id))

    def _forget(self, state: OpenRequest) -> None:
        imp = state.impression
        self._open.pop(imp.request_id, None)
        if self._durable and imp.request_id in self._changed_requests:
            self._leaving[imp.request_id] = state
        self._gone.add(imp.request_id)
        heapq.heappush(self._forgotten_expiry, (imp.ts, imp.request_id))
        ids = self._by_user.get(imp.user_id)
        if ids is not None:
            if imp.request_id in ids:
                ids.remove(imp.request_id)
            if not ids:
                del self._by_user[imp.user_id]

    # -- durable state ----------------------------------------------------------------------
    def take_changes(self) -> tuple[dict[str, OpenRequest | None], list[str],
                                    dict[str, Click | Purchase | None], dict[str, float | None]]:
        """What changed since the last call, then forget the list: requests to write under their key
        (open or just forgotten; None: past the dedupe horizon, a tombstone), the ids of requests
        restored from an old changelog's forgotten records that are past the horizon now, parked
        events (None: gone) and the ids of rejected orphans with their time (None: past the horizon).

        One record per request for its whole life when nothing joins it after a checkpoint: written
        when it opens, a tombstone when it leaves the horizon. Its close and its forgetting are
        derived from the checkpointed watermark on restore.
        """
        requests: dict[str, OpenRequest | None] = dict.fromkeys(self._expired)
        for rid in self._changed_requests:
            requests[rid] = self._open.get(rid) or self._leaving.get(rid)
        legacy = [rid for rid in self._expired if rid in self._legacy_forgotten]
        self._legacy_forgotten.difference_update(legacy)
        self._expired, self._leaving = [], {}
        rejected, self._rejected = self._rejected, {}
        parked, self._changed_parked = self._changed_parked, {}
        self._changed_requests = set()
        if self._checkpointed is not None:
            self._checkpointed = self.watermark
        return requests, legacy, parked, rejected

    def restore(self, requests: list[OpenRequest], forgotten: list[Forgotten], parked: list[Click | Purchase],
                rejected: dict[str, float], watermark: float) -> None:
        """Rebuild the state a ``take_changes()`` stream described: deadlines and dedupe set included.

        Forgotten requests matter: re-reading, after a crash, a click whose request was
        already forgotten must be recognised as a duplicate, not dead-lettered as an orphan.
        ``forgotten`` are the forgotten records of a changelog written before a forgotten request
        stayed under its request's key.
        """
        self.watermark = watermark
        if self._checkpointed is not None:
            self._checkpointed = watermark
        for state in sorted(requests, key=lambda s: s.impression.ts):
            imp = state.impression
            for event_id in state.events:
                self._duplicate(event_id, imp.ts)
            # Closing a click window and forgetting a request are not written to the changelog: each
            # happened exactly when event time passed its deadline, and this is the checkpoint's watermark.
            if imp.ts + self.config.purchase_window + self.config.grace <= watermark:
                self._gone.add(imp.request_id)
                heapq.heappush(self._forgotten_expiry, (imp.ts, imp.request_id))
                continue
            state.closed = state.closed or imp.ts + self.config.click_window + self.config.grace <= watermark
            self._open[imp.request_id] = state
            self._index(imp)
            if not state.closed:
                self._schedule(imp.ts + self.config.click_window + self.config.grace, "close", imp.request_id)
            self._schedule(imp.ts + self.config.purchase_window + self.config.grace, "forget", imp.request_id)
        for gone in forgotten:
            for event_id in gone.events:
                self._duplicate(event_id, gone.ts)
            self._gone.add(gone.request_id)
            self._legacy_forgotten.add(gone.request_id)
            heapq.heappush(self._forgotten_expiry, (gone.ts, gone.request_id))
        for event_id, ts in rejected.items():
            self._duplicate(event_id, ts)
            heapq.heappush(self._rejected_expiry, (ts, event_id))
        for event in sorted(parked, key=lambda e: e.ts):
            self._duplicate(event.event_id, event.ts)
            self._park(event)
        self._changed_requests = set()
        self._expired, self._leaving = [], {}
        self._rejected = {}
        self._changed_parked = {}

    def oldest_open_ts(self) -> float | None:
        """Event time of the oldest impression still held (what a restart must re-read from)."""
        if not self._open:
            return None
        return min(s.impression.ts for s in self._open.values())

    # -- output ------------------------------------------------------------------------------
    def _experience(self, state: OpenRequest, item: str, kind: Literal["click", "no_click", "purchase"], ts: float,
                    value: float = 0.0) -> Experience:
        cfg = self.config
        imp = state.impression
        position, propensity = state.slots[item]
        if kind == "click":
            parts = CLICKED
            reward = cfg.click_weight
        elif kind == "purchase":
            parts = RewardParts(purchase=1.0, value=value)
            reward = cfg.purchase_weight + cfg.value_weight * value
        else:
            parts = NOTHING
            reward = 0.0
        return Experience(
            event_id=f"{imp.request_id}:{item}:{kind}",
            request_id=imp.request_id,
            user_id=imp.user_id,
            action=item,
            position=position,
            propensity=propensity,
            reward=reward,
            reward_parts=parts,
            kind=kind,
            policy_version=imp.policy_version,
            ts=ts,
            context=imp.context if isinstance(imp.context, Context) else Context(),
            candidates=imp.candidates,
            arm=imp.arm,
            policy_name=imp.policy_name,
        )


def _orphan_detail(event: Click | Purchase) -> str:
    how = f"request_id {event.request_id}" if event.request_id else f"user {event.user_id} and item {event.item_id}"
    return f"no impression matches {how} within the window and grace period"
