"""Typed contracts of every topic (docs/ARCHITECTURE.md, "Topics and contracts"), validated at the edge.

msgspec Structs decode JSON straight into typed objects with range checks in one C
pass, so validation costs about as much as parsing. Unknown fields are ignored for
forward compatibility; oversized messages are rejected before parsing, never
truncated. ``decode`` turns every failure into ``InvalidMessage`` with a short,
low-cardinality ``reason`` suitable for a metric label and the dead-letter topic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# Epoch seconds. The upper bound (year 2100) also catches milliseconds sent by mistake.
MAX_TS = 4_102_444_800.0
Timestamp = Annotated[float, Meta(ge=0.0, le=MAX_TS, description="event time, epoch seconds")]
MAX_ID = 128
Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID)]
#: An experience's id is ``request_id:item_id:kind``: two ids and the longest kind fit, so a valid
#: impression never yields an experience its own contract refuses.
MAX_EXPERIENCE_ID = 2 * MAX_ID + len(":no_click:") + 1
ExperienceId = Annotated[str, Meta(min_length=1, max_length=MAX_EXPERIENCE_ID)]
Propensity = Annotated[float, Meta(gt=0.0, le=1.0)]
#: Version numbers stay exact in JSON (2**53 - 1, the largest integer a double holds) and fit int64
#: wherever they are stored; a larger one is refused at the edge, not found while encoding state.
MAX_VERSION = 2**53 - 1
Version = Annotated[int, Meta(ge=0, le=MAX_VERSION)]
#: A policy name on the policies topic, and so an arm of an online experiment (RECSYS_POLICY_NAME's rule).
POLICY_NAME = r"^[A-Za-z0-9._-]{1,128}$"
PolicyName = Annotated[str, Meta(pattern=POLICY_NAME)]
NonNegative = Annotated[float, Meta(ge=0.0)]
#: Purchase values and prices: bounded so a weighted reward can never overflow to infinity.
MAX_MONEY = 1e12
Money = Annotated[float, Meta(ge=0.0, le=MAX_MONEY)]

MAX_SLATE = 100
#: Most candidates one scoring request may rank (and an impression may list).
MAX_CANDIDATES = 1000
MAX_FEATURES = 512

#: Largest accepted encoded message per kind; the policy header carries only metadata.
MAX_EVENT_BYTES = 64 * 1024
#: An experience copies its impression's context and candidates, so it may exceed the impression's
#: own limit by its other fields (ids, numbers, field names): 8 KiB covers them with room to spare.
MAX_EXPERIENCE_BYTES = MAX_EVENT_BYTES + 8 * 1024
MAX_ITEM_BYTES = 64 * 1024
MAX_POLICY_HEADER_BYTES = 256 * 1024
#: Largest policy a header may announce (its weights, all chunks together).
MAX_POLICY_BYTES = 4 * 1024**3
#: Largest original payload copied into a dead letter (the rest is summarised by size).
MAX_DEAD_LETTER_ORIGINAL_BYTES = 64 * 1024


class InvalidMessage(ValueError):
    """A message failed validation; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: Every reason a message can be rejected for, bounded so it is safe as a label: the
#: first four at decoding, then the reward join's (``stream/join/``), and ``width``: context.features
#: not the policy's width (RECSYS_USER_FEATURES), refused where events enter (``ingest``, the join's
#: input, where ``dlq replay`` can resend them once the setting is fixed) and by the replay service.
REASONS = ("oversized", "malformed_json", "schema", "unknown_topic", "orphan", "not_shown", "late", "future", "width")


class Context(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """What the scorer knew about the request: numeric user features and string attributes."""

    features: Annotated[list[float], Meta(max_length=MAX_FEATURES)] = []
    attrs: Annotated[dict[str, str], Meta(max_length=32)] = {}

    def __post_init__(self) -> None:
        # A finite sum proves every value finite at C speed; only a non-finite sum (an inf or
        # NaN among them, or finite values whose sum overflows) needs the look at each value.
        if not math.isfinite(sum(self.features)) and any(not math.isfinite(x) for x in self.features):
            raise ValueError("context.features must be finite numbers")

    def fits(self, width: int) -> bool:
        """Whether the features suit a policy of this width: exactly ``width`` values, or none at all
        (unknown: served as zeros). Anything else is refused, never cut or padded to fit."""
        return not self.features or len(self.features) == width


class ShownItem(msgspec.Struct, frozen=True):
    item_id: Id
    position: Annotated[int, Meta(ge=0, lt=MAX_SLATE)]
    propensity: Propensity
    score: float | None = None


class Impression(msgspec.Struct, frozen=True):
    """A slate the scorer showed, with the propensity of every item under the live policy."""

    event_id: Id
    request_id: Id
    user_id: Id
    ts: Timestamp
    shown: Annotated[list[ShownItem], Meta(min_length=1, max_length=MAX_SLATE)]
    policy_version: Version
    context: Context = Context()
    #: Every item the policy chose among (optional): what off-policy learning compares the
    #: shown item against. Without it only the reward model learns from this slate.
    candidates: Annotated[list[Id], Meta(max_length=MAX_CANDIDATES)] | None = None
    #: The experiment arm the user is in (``score --arms``), and the policy that chose the slate: another
    #: arm's while this arm's learner has published nothing (such requests judge neither arm). None: logged
    #: before arms existed, or imported.
    arm: PolicyName | None = None
    policy_name: PolicyName | None = None

    def __post_init__(self) -> None:
        positions = [s.position for s in self.shown]
        if len(set(positions)) != len(positions):
            raise ValueError("shown items must have distinct positions")
        items = [s.item_id for s in self.shown]
        if len(set(items)) != len(items):
            raise ValueError("shown items must be distinct")


class Click(msgspec.Struct, frozen=True):
    event_id: Id
    user_id: Id
    item_id: Id
    ts: Timestamp
    request_id: Id | None = None


class Purchase(msgspec.Struct, frozen=True):
    event_id: Id
    user_id: Id
    item_id: Id
    value: Money
    ts: Timestamp
    request_id: Id | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError("value must be finite")


class Item(msgspec.Struct, frozen=True):
    """Catalogue entry; its text lets the policy score it before anyone clicks it."""

    item_id: Id
    title: Annotated[str, Meta(max_length=512)]
    ts: Timestamp
    description: Annotated[str, Meta(max_length=8192)] = ""
    category: Annotated[str, Meta(max_length=128)] = ""
    price: Money = 0.0


class RewardParts(msgspec.Struct, frozen=True):
    click: NonNegative = 0.0
    purchase: NonNegative = 0.0
    value: NonNegative = 0.0


class Experience(msgspec.Struct, frozen=True):
    """One logged bandit example: what was shown, with what propensity, and what it earned.

    ``kind`` says which reward part this record carries; a late purchase produces a
    follow-up record of kind ``purchase`` so no part is ever counted twice.
    """

    event_id: ExperienceId
    request_id: Id
    user_id: Id
    action: Id
    position: Annotated[int, Meta(ge=0, lt=MAX_SLATE)]
    propensity: Propensity
    reward: float
    reward_parts: RewardParts
    kind: Literal["click", "no_click", "purchase"]
    policy_version: Version
    ts: Timestamp
    context: Context = Context()
    #: The impression's candidate set, copied by the join (see ``Impression.candidates``).
    candidates: Annotated[list[Id], Meta(max_length=MAX_CANDIDATES)] | None = None
    #: Copied from the impression (see ``Impression.arm``): which learner trains on it.
    arm: PolicyName | None = None
    policy_name: PolicyName | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.reward):
            raise ValueError("reward must be finite")


class PolicyHeader(msgspec.Struct, frozen=True):
    """Metadata of one policy version; the safetensors weights follow in chunks."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    version: Annotated[int, Meta(ge=1, le=MAX_VERSION)]
    created_at: Timestamp
    checksum: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    total_bytes: Annotated[int, Meta(ge=1, le=MAX_POLICY_BYTES)]
    n_chunks: Annotated[int, Meta(ge=1, le=MAX_POLICY_BYTES)]
    model_config: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    parent: Annotated[int, Meta(ge=1, le=MAX_VERSION)] | None = None
    signature: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")] | None = None
    #: full: every weight; delta: the rows that moved since ``parent`` (``models/delta.py``).
    kind: Literal["full", "delta"] = "full"
    #: SHA-256 of the whole state this version stands for, and (a delta) of the state it applies onto.
    state: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")] | None = None
    parent_state: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")] | None = None


class ScoreRequest(msgspec.Struct, frozen=True):
    """Rank ``candidates`` for ``user_id``; ``k`` items come back (default: the scorer's slate size)."""

    user_id: Id
    candidates: Annotated[list[Id], Meta(min_length=1, max_length=MAX_CANDIDATES)]
    context: Context = Context()
    k: Annotated[int, Meta(ge=1, le=MAX_SLATE)] | None = None
    request_id: Id | None = None

    def __post_init__(self) -> None:
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError("candidates must be distinct")


class ScoredItem(msgspec.Struct, frozen=True):
    item_id: Id
    position: int
    propensity: float
    score: float


class ScoreResponse(msgspec.Struct, frozen=True):
    """The slate served, its logged propensities and the policy version that chose it."""

    request_id: Id
    user_id: Id
    policy_version: Version
    slate: list[ScoredItem]
    personalised_from: int = 0     # recent experiences of this user the fast weights adapted to
    ts: float = 0.0
    error: str | None = None       # set (and slate empty) when a Kafka request could not be served
    arm: str | None = None         # the user's experiment arm, and the policy that chose the slate
    policy_name: str | None = None


class DeadLetter(msgspec.Struct, frozen=True):
    """Why a message was refused and where it came from, with its original bytes."""

    source_topic: str
    reason: str
    error: str
    component: str
    ts: Timestamp
    original: bytes
    original_size: Annotated[int, Meta(ge=0)]
    original_truncated: bool = False
    key: bytes | None = None
    partition: int | None = None
    offset: int | None = None
    line: Annotated[int, Meta(ge=1)] | None = None


@dataclass(frozen=True)
class Contract:
    """How one logical topic's values are typed, limited and keyed."""

    type: type
    max_bytes: int
    key_field: str | None


#: Logical topic name -> its contract. Topic names here are before the prefix.
CONTRACTS: dict[str, Contract] = {
    "impressions": Contract(Impression, MAX_EVENT_BYTES, "user_id"),
    "clicks": Contract(Click, MAX_EVENT_BYTES, "user_id"),
    "purchases": Contract(Purchase, MAX_EVENT_BYTES, "user_id"),
    "items": Contract(Item, MAX_ITEM_BYTES, "item_id"),
    "experiences": Contract(Experience, MAX_EXPERIENCE_BYTES, "user_id"),
    "policies": Contract(PolicyHeader, MAX_POLICY_HEADER_BYTES, "name"),
    "dlq": Contract(DeadLetter, 2 * MAX_DEAD_LETTER_ORIGINAL_BYTES, "source_topic"),
    "score-requests": Contract(ScoreRequest, MAX_EVENT_BYTES, "user_id"),
    "score-responses": Contract(ScoreResponse, MAX_EVENT_BYTES, "request_id"),
}

_DECODERS: dict[str, msgspec.json.Decoder] = {}
_ENCODER = msgspec.json.Encoder()


def decoder_for(topic: str) -> msgspec.json.Decoder:
    try:
        return _DECODERS[topic]
    except KeyError:
        if topic not in CONTRACTS:
            raise InvalidMessage("unknown_topic", f"no contract for topic {topic!r}") from None
        dec: msgspec.json.Decoder = msgspec.json.Decoder(CONTRACTS[topic].type)
        _DECODERS[topic] = dec
        return dec


#: Deepest nesting of JSON objects and arrays a message may have. Every contract needs
#: at most 4 (an impression's shown items); a thousand levels would exhaust the decoder's stack.
MAX_NESTING = 32
#: Below this many brackets a message cannot nest past ``MAX_NESTING``: the exact scan is skipped.
_BRACKETS_WORTH_SCANNING = MAX_NESTING


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(rb"[\[\]{}]")


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of objects and arrays in JSON text (brackets inside strings do not count).

    Strings are cut out and brackets picked by regular expressions (C speed); Python only
    walks the brackets themselves.
    """
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", data)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_nesting(raw: bytes) -> None:
    """``InvalidMessage`` (malformed_json) if ``raw`` nests deeper than ``MAX_NESTING``.

    Two C-speed counts rule out deep nesting for ordinary messages; only the rest are scanned.
    """
    if raw.count(b"[") + raw.count(b"{") > _BRACKETS_WORTH_SCANNING:
        depth = nesting_depth(raw)
        if depth > MAX_NESTING:
            raise InvalidMessage("malformed_json", f"nested {depth} levels deep; the limit is {MAX_NESTING}")


def decode(topic: str, data: bytes | bytearray | memoryview | str) -> Any:
    """Validate and decode one message of a logical topic, or raise ``InvalidMessage``."""
    dec = decoder_for(topic)
    limit = CONTRACTS[topic].max_bytes
    if isinstance(data, str):
        data = data.encode()
    size = len(data)
    if size > limit:
        raise InvalidMessage("oversized", f"{size} bytes exceeds the {limit}-byte limit of {topic}")
    raw = bytes(data)
    check_nesting(raw)
    try:
        return dec.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidMessage("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidMessage("malformed_json", f"not valid JSON: {exc}") from None
    except RecursionError:   # a last line of defence: the depth scan above should always come first
        raise InvalidMessage("malformed_json", "nested too deeply to decode") from None


#: Topics whose events carry a context that a policy reads (score-requests are answered 422 instead).
WIDTH_CHECKED = ("impressions", "experiences")


def decode_for_policy(topic: str, data: bytes | bytearray | memoryview | str, user_features: int | None) -> Any:
    """``decode``, and for an event whose context the policy reads, refuse a width it cannot take
    (``InvalidMessage("width")``, naming the setting): the edge is where a replay can still resend it once the
    setting is fixed. ``user_features`` None checks no width."""
    event = decode(topic, data)
    if user_features is not None and topic in WIDTH_CHECKED and not event.context.fits(user_features):
        raise InvalidMessage("width", f"context.features has {len(event.context.features)} values; the policy "
                                      f"takes {user_features} (RECSYS_USER_FEATURES)")
    return event


def encode(event: msgspec.Struct) -> bytes:
    return _ENCODER.encode(event)


def key_of(topic: str, event: msgspec.Struct) -> bytes | None:
    """The partitioning key of an event (user_id for user events, so joins stay local)."""
    field = CONTRACTS[topic].key_field
    if field is None:
        return None
    value = getattr(event, field)
    return value.encode() if isinstance(value, str) else None
