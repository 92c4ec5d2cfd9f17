"""Policy versions on the compacted ``policies`` topic: publish, follow, list, roll back.

A version is larger than a Kafka message, so its safetensors weights travel as
chunks and its JSON header (``schemas.PolicyHeader``) is written last: the header
is what makes a version visible, and a reader assembles a version only once the
header and every chunk it names are there. Every record has its own key
(``name/version/part.claim``, the claim being the start of the weights' checksum)
so compaction keeps all retained versions whole, and two writers of one number
(a rollback racing the learner) never overwrite each other's records: readers keep
the first claimant, before compaction and after. Retiring a version tombstones its
header first, so a half-deleted version is never seen.

Readers verify checksum, signature and tensor shapes (``models.serialization``)
before a version goes anywhere near a live model; a version that fails is counted
by reason and skipped, and the reader keeps the one it had.

Most versions are deltas of their parent (``models/delta.py``); a full snapshot comes
every ``full_every`` versions or seconds and with every rollback. A reader applies a
delta only onto the exact state it names; one whose parent it does not hold waits
(``recsys_policy_deltas_waiting``) until a full snapshot lets it catch up, and it
never guesses.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from prometheus_client import Counter, Gauge

from models.delta import State
from models.policy import TwoTowerPolicy
from models.serialization import PolicyIntegrityError, pack, pack_delta, unpack, verify_authorship
from stream import schemas
from stream.config import Settings
from stream.kafka.clients import consumer_config
from stream.kafka.producer import DeliveryError, EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from stream.policy.trust import NO_KEY, Trust, UnsignedRefused, trust_of

log = logging.getLogger(__name__)

#: Room left in each message for its key, headers and the broker's record overhead.
CHUNK_HEADROOM = 16 * 1024
HEADER_PART = "h"
#: Unverified numbers above the newest verified version that a rollback still steps over.
MAX_VERSIONS_IN_FLIGHT = 16
#: Versions a reader keeps waiting for a parent or a snapshot (the oldest go first).
MAX_PENDING_VERSIONS = 256
#: Refusals a reader remembers for inspection (the newest): a forger can write bad versions without end.
MAX_REMEMBERED_REJECTIONS = 1000

POLICIES_PUBLISHED = Counter(
    "recsys_policy_versions_published_total", "Policy versions written to the policies topic.", ["component"])
POLICY_REJECTIONS = Counter(
    "recsys_policy_rejections_total",
    "Policy versions a reader refused (checksum, signature, unsigned, shape, config, format, size, header, "
    "incomplete, parent, taken, range), by component and reason.", ["component", "reason"])
POLICY_VERSION = Gauge(
    "recsys_policy_version", "Policy version live in this process (0: none yet).", ["component"])
POLICY_LOADED_AT = Gauge(
    "recsys_policy_loaded_timestamp_seconds", "When this process swapped to its live policy version.", ["component"])
POLICY_BYTES = Counter(
    "recsys_policy_bytes_published_total", "Bytes of policy weights written, by kind (full or delta).", ["kind"])
DELTAS_WAITING = Gauge(
    "recsys_policy_deltas_waiting", "Delta versions newer than the live one whose parent this reader does not hold "
    "(they wait for a full snapshot).", ["component"])


class PolicyNotFound(LookupError):
    """No complete, verified version matches the request."""


class PolicyRaceError(RuntimeError):
    """A rollback's version number was taken by another writer (the learner) at the same moment."""


def record_key(name: str, version: int, part: str, claim: str = "") -> bytes:
    return f"{name}/{version:012d}/{part}{'.' + claim if claim else ''}".encode()


def claim_of(header: schemas.PolicyHeader | dict) -> str:
    """What tells one writer's records of a version number from another's: the weights' checksum, shortened."""
    checksum = header["checksum"] if isinstance(header, dict) else header.checksum
    return str(checksum)[:16]


def split_key(key: bytes | None) -> tuple[str, int, str] | None:
    """(name, number, part) of a key shaped as this bus writes them, whatever the number."""
    if not key:
        return None
    try:
        name, version, part = key.decode().rsplit("/", 2)
        return name, int(version), part
    except (UnicodeDecodeError, ValueError):
        return None


def parse_key(key: bytes | None) -> tuple[str, int, str] | None:
    """(name, version, part) of a policies record key (the part ends in ``.claim`` but in records written
    before claims were keyed), or None for a key this bus did not write or a number out of range."""
    parsed = split_key(key)
    return parsed if parsed is not None and 1 <= parsed[1] <= schemas.MAX_VERSION else None


def chunk_size(settings: Settings) -> int:
    return max(1024, settings.max_message_bytes - CHUNK_HEADROOM)


def signing_key(settings: Settings) -> bytes | None:
    return trust_of(settings).signing_key


@dataclass(frozen=True)
class PolicyVersion:
    """A complete version as read from the topic (verified only by ``load``)."""

    header: schemas.PolicyHeader
    blob: bytes

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def is_delta(self) -> bool:
        return self.header.kind == "delta"

    def load(self, trust: Trust | bytes | None, base: TwoTowerPolicy | None = None) -> TwoTowerPolicy:
        """The verified model, or ``PolicyIntegrityError`` naming what did not match (``unsigned``
        when ``trust`` has no key and does not allow unsigned versions). A delta needs ``base``,
        its parent's model (``load_version`` finds the chain)."""
        keys, required = _verification(trust)
        return unpack(msgspec.structs.asdict(self.header), self.blob, keys, require_signature=required, base=base)

    def verify_authorship(self, trust: Trust | bytes | None) -> None:
        """``PolicyIntegrityError`` unless a trusted writer wrote this header and these weights."""
        keys, required = _verification(trust)
        verify_authorship(msgspec.structs.asdict(self.header), self.blob, keys, require_signature=required)


def _verification(trust: Trust | bytes | None) -> tuple[list[bytes] | bytes | None, bool]:
    """(keys, whether a signature is required) for ``models.serialization``: a ``Trust`` names both; a bare
    key (or None) is checked when present and requires nothing."""
    if isinstance(trust, Trust):
        return trust.verification_keys(), not trust.allow_unsigned
    return trust, False


def one_per_number(versions: list[PolicyVersion], trust: Trust | bytes | None,
                   component: str | None = None,
                   refused: dict[int, PolicyIntegrityError] | None = None) -> list[PolicyVersion]:
    """``versions`` (by number, then in topic order, as ``read_versions`` lists them) with each number
    once: its first claimant that a trusted writer wrote.

    Two writers can take one number: a forger, or a rollback racing the learner. Who wrote *last*
    must not decide (a forged snapshot written after the genuine v2 would break every delta built on
    it), and a reader following the topic live adopts the first and never looks back, so every reader
    keeps the first claimant that proves its authorship. Numbers with none are left out; with
    ``component`` their refusals are counted, and ``refused`` collects the first refusal of each."""
    chosen: dict[int, PolicyVersion] = {}
    for v in versions:
        if v.version in chosen:
            continue
        try:
            v.verify_authorship(trust)
        except PolicyIntegrityError as exc:
            if refused is not None:
                refused.setdefault(v.version, exc)
            if component is not None:
                POLICY_REJECTIONS.labels(component, exc.reason).inc()
                log.warning("v%d on the topic does not verify (%s); not counting it", v.version, exc)
            continue
        chosen[v.version] = v
    return [chosen[n] for n in sorted(chosen)]


def load_version(versions: list[PolicyVersion], version: int, trust: Trust | bytes | None) -> TwoTowerPolicy:
    """Version ``version`` of ``versions`` verified: a full snapshot as it is, a delta rebuilt from the
    nearest full snapshot before it and every delta in between (each verified onto the one before)."""
    refused: dict[int, PolicyIntegrityError] = {}
    return _Chain(one_per_number(versions, trust, refused=refused), trust, refused).load(version)


class _Chain:
    """Rebuilds versions (one per number) from their snapshot and deltas, remembering refusals and only
    the last few rebuilt models (a full model is megabytes, and a chain holds up to ``full_every`` deltas)."""

    KEEP_MODELS = 4

    def __init__(self, versions: list[PolicyVersion], trust: Trust | bytes | None,
                 unverified: dict[int, PolicyIntegrityError] | None = None) -> None:
        self.trust = trust
        self.by_number = {v.version: v for v in versions}
        #: Numbers whose every claimant failed its authorship check, with the first refusal: the real reason.
        self.unverified = unverified or {}
        self._models: OrderedDict[int, TwoTowerPolicy] = OrderedDict()
        self._refused: dict[int, PolicyIntegrityError] = {}

    def load(self, version: int) -> TwoTowerPolicy:
        if version in self._refused:
            raise self._refused[version]
        model = self._models.get(version)
        if model is not None:
            self._models.move_to_end(version)
            return model
        try:
            model = self._rebuild(version)
        except PolicyIntegrityError as exc:
            self._refused[version] = exc
            raise
        self._models[version] = model
        if len(self._models) > self.KEEP_MODELS:
            self._models.popitem(last=False)
        return model

    def _rebuild(self, version: int) -> TwoTowerPolicy:
        claim = self.by_number.get(version)
        if claim is None:
            if version in self.unverified:
                raise self.unverified[version]
            raise PolicyIntegrityError("parent", f"v{version} is not on the topic")
        if not claim.is_delta:
            return claim.load(self.trust)
        parent = self.by_number.get(claim.header.parent or 0)
        if parent is None and claim.header.parent in self.unverified:
            refusal = self.unverified[claim.header.parent]
            raise PolicyIntegrityError("parent", f"v{version} needs v{claim.header.parent}, which was refused "
                                                 f"({refusal})")
        if parent is None or parent.header.state != claim.header.parent_state:
            raise PolicyIntegrityError("parent", f"v{version} needs v{claim.header.parent} in the state it names, "
                                                 "which is not on the topic")
        return claim.load(self.trust, base=self.load(parent.version))


class VersionAssembler:
    """Turns the policies records of one name, in log order, into complete versions (pure logic).

    A publisher writes a version's chunks, then its header, so a reader has one version waiting
    for its header per writer at work (the learner, a rollback). Chunks that no header follows
    (a publisher killed mid-write, or records forged to fill readers' memory) are dropped once
    ``MAX_HEADERLESS_VERSIONS`` newer versions wait, or once they add up to more than any version
    may hold, and refused as ``incomplete``.
    """

    MAX_HEADERLESS_VERSIONS = 4

    def __init__(self, name: str) -> None:
        self.name = name
        self._chunks: dict[tuple[int, str], dict[int, bytes]] = {}   # (version, claim) -> chunk index -> bytes
        self._pending_bytes: dict[tuple[int, str], int] = {}
        #: (version, reason, detail) of what did not make a version, the newest until a reader takes them.
        self.refused: deque[tuple[int, str, str]] = deque(maxlen=MAX_REMEMBERED_REJECTIONS)

    def feed(self, key: bytes | None, value: bytes | None) -> PolicyVersion | None:
        """Take one record; return the version it completed, if any."""
        parsed = split_key(key)
        if parsed is None or parsed[0] != self.name:
            return None
        _, version, keyed = parsed
        if not 1 <= version <= schemas.MAX_VERSION:
            if value is not None:       # a number no version may take: refused and counted, not dropped silently
                self.refused.append((version, "range", f"version number {version} is outside 1..{schemas.MAX_VERSION}"))
            return None
        part, _, claim = keyed.partition(".")      # records of before claims were keyed have none
        if value is None:  # tombstone: the version is being retired
            self._forget((version, claim))
            return None
        if part == HEADER_PART:
            chunks = self._forget((version, claim)) or {}
            try:
                header = schemas.decode("policies", value)
            except schemas.InvalidMessage as exc:
                self.refused.append((version, "header", f"{exc.reason}: {exc.detail}"))
                return None
            if header.version != version or header.name != self.name or (claim and claim != claim_of(header)):
                self.refused.append((version, "header", f"header says {header.name} v{header.version} "
                                                       f"({claim_of(header)}), its key says {self.name} v{version}"
                                                       f"{' (' + claim + ')' if claim else ''}"))
                return None
            # Chunks are written (and acknowledged) before their header, on the same partition:
            # a header that finds any missing belongs to a publisher that did not follow that.
            missing = [i for i in range(header.n_chunks) if i not in chunks]
            if missing:
                self.refused.append((version, "incomplete", f"header names {header.n_chunks} chunks, "
                                                           f"{len(missing)} missing (first {missing[0]})"))
                return None
            return PolicyVersion(header, b"".join(chunks[i] for i in range(header.n_chunks)))
        if part.startswith("c") and part[1:].isdigit():
            self._hold((version, claim), int(part[1:]), value)
        return None

    def _hold(self, key: tuple[int, str], index: int, value: bytes) -> None:
        pending = self._chunks.get(key)
        if pending is None:
            while len(self._chunks) >= self.MAX_HEADERLESS_VERSIONS:
                oldest = next(iter(self._chunks))
                dropped = self._forget(oldest) or {}
                self.refused.append((oldest[0], "incomplete", f"{len(dropped)} chunks that no header followed "
                                                              f"while {self.MAX_HEADERLESS_VERSIONS} newer versions "
                                                              "were written; dropped"))
            pending = self._chunks[key] = {}
        size = self._pending_bytes.get(key, 0) - len(pending.get(index, b"")) + len(value)
        if size > schemas.MAX_POLICY_BYTES:
            self._forget(key)
            self.refused.append((key[0], "incomplete", f"chunks add up to more than a version may hold "
                                                       f"({schemas.MAX_POLICY_BYTES} bytes); dropped"))
            return
        pending[index] = value
        self._pending_bytes[key] = size

    def _forget(self, key: tuple[int, str]) -> dict[int, bytes] | None:
        self._pending_bytes.pop(key, None)
        return self._chunks.pop(key, None)

    @property
    def pending_bytes(self) -> int:
        return sum(self._pending_bytes.values())


# -- writing ------------------------------------------------------------------------------------
class PolicyPublisher:
    """Writes versions of one policy: chunks first, header last, each acknowledged before returning."""

    def __init__(self, settings: Settings, component: str = "learner", name: str | None = None) -> None:
        self.settings = settings
        self.component = component
        self.name = name or settings.policy_name
        self.topic = topic_name(settings, "policies")
        self._out = EventProducer(settings, component, **{"message.max.bytes": settings.max_message_bytes})

    def _send(self, key: bytes, value: bytes | None) -> None:
        self._out.send_record("policies", key, value, 0)

    def _flush(self, what: str) -> None:
        try:
            self._out.flush(30)
        except DeliveryError as exc:
            raise DeliveryError(f"{what}: {exc}", exc.failures) from exc

    def publish(self, model: TwoTowerPolicy, version: int, parent: int | None = None,
                metrics: dict[str, float] | None = None) -> schemas.PolicyHeader:
        """Publish ``model`` as ``version``, signed; visible to readers once this returns."""
        trust = trust_of(self.settings)
        trust.require_key()
        header, blob = pack(model, self.name, version, parent, metrics, trust.signing_key)
        return self.publish_packed(header, blob)

    def publish_delta(self, model: TwoTowerPolicy, base: State, version: int, parent: int,
                      metrics: dict[str, float] | None = None, changes: State | None = None) -> schemas.PolicyHeader:
        """Publish ``model`` (the published state: parent + what moved) as a delta of ``base``, the parent's
        state; readers holding that exact state apply it. ``changes``: the delta, when already made."""
        trust = trust_of(self.settings)
        trust.require_key()
        header, blob = pack_delta(model, base, self.name, version, parent, metrics, trust.signing_key,
                                  changes=changes)
        return self.publish_packed(header, blob)

    def publish_packed(self, header: dict, blob: bytes) -> schemas.PolicyHeader:
        if not header.get("signature") and not trust_of(self.settings).allow_unsigned:
            raise UnsignedRefused(f"refusing to publish {self.name} v{header.get('version')} unsigned: " + NO_KEY)
        size = chunk_size(self.settings)
        chunks = [blob[i:i + size] for i in range(0, len(blob), size)] or [b""]
        wire = schemas.PolicyHeader(**{**header, "n_chunks": len(chunks)})
        encoded = schemas.encode(wire)
        if len(encoded) > schemas.MAX_POLICY_HEADER_BYTES:
            raise ValueError(f"policy header is {len(encoded)} bytes, over {schemas.MAX_POLICY_HEADER_BYTES}")
        claim = claim_of(wire)
        for i, chunk in enumerate(chunks):
            self._send(record_key(self.name, wire.version, f"c{i:05d}", claim), chunk)
        self._flush(f"chunks of {self.name} v{wire.version}")
        self._send(record_key(self.name, wire.version, HEADER_PART, claim), encoded)
        self._flush(f"header of {self.name} v{wire.version}")
        POLICIES_PUBLISHED.labels(self.component).inc()
        POLICY_BYTES.labels(wire.kind).inc(len(blob))
        log.info("published %s v%d (%s, %d bytes in %d chunks)", self.name, wire.version, wire.kind, len(blob),
                 len(chunks))
        return wire

    def retire(self, *headers: schemas.PolicyHeader) -> None:
        """Tombstone versions, each header first (so no reader ever sees one half gone), in one flush: one
        batch on the topic, not one per version (a broker that does not compact keeps every batch). Keys of
        both forms: a version written before claims were keyed has none."""
        for header in headers:
            for claim in (claim_of(header), ""):
                self._send(record_key(self.name, header.version, HEADER_PART, claim), None)
            for claim in (claim_of(header), ""):
                for i in range(header.n_chunks):
                    self._send(record_key(self.name, header.version, f"c{i:05d}", claim), None)
        if headers:
            self._flush(f"retiring {self.name} v{headers[0].version}-v{headers[-1].version}")

    def close(self) -> None:
        try:
            self._out.close(10)
        except DeliveryError as exc:
            log.warning("closing the policy publisher: %s", exc)


# -- reading ------------------------------------------------------------------------------------
def read_versions(settings: Settings, name: str | None = None, timeout: float = 60.0) -> list[PolicyVersion]:
    """Every complete version of ``name`` now on the topic, oldest first (not yet verified); a number
    claimed by two versions (one of them forged) appears twice."""
    return _scan(settings, name or settings.policy_name, timeout)[0]


def _scan(settings: Settings, name: str, timeout: float) -> tuple[list[PolicyVersion], int]:
    """(complete versions by number, then in log order; the highest version number any record of
    ``name`` carries): a version still being written has chunks but no header yet, and its number is
    taken. A number may appear more than once (a forgery, or a rollback that raced the learner); the
    readers that verify (``one_per_number``) keep its first claimant that a trusted writer wrote."""
    assembler = VersionAssembler(name)
    complete: dict[int, list[PolicyVersion]] = {}
    highest = 0
    for msg in read_topic(settings, topic_name(settings, "policies"), "policy-read", timeout):
        parsed = parse_key(msg.key())
        if parsed is not None and parsed[0] == name and msg.value() is not None:
            highest = max(highest, parsed[1])
        done = assembler.feed(msg.key(), msg.value())
        if done is not None:
            complete.setdefault(done.version, []).append(done)
        elif msg.value() is None and parsed and (part := parsed[2].partition("."))[0] == HEADER_PART:
            claim = part[2]
            kept = [v for v in complete.pop(parsed[1], []) if claim and claim_of(v.header) != claim]
            if kept:
                complete[parsed[1]] = kept
    return [v for number in sorted(complete) for v in complete[number]], highest


def newest_verified(versions: list[PolicyVersion], key: Trust | bytes | None,
                    component: str = "learner") -> PolicyVersion | None:
    """The newest of ``versions`` whose checksum, signature and shapes verify.

    A version number on the topic proves nothing until its weights verify: a forged header
    at a huge number must not steer anyone's numbering, adoption or rollback. Refused ones
    are counted like any other rejection.
    """
    claimants = one_per_number(versions, key, component)
    chain = _Chain(claimants, key)
    for candidate in reversed(claimants):
        try:
            chain.load(candidate.version)
        except PolicyIntegrityError as exc:
            POLICY_REJECTIONS.labels(component, exc.reason).inc()
            log.warning("v%d on the topic does not verify (%s); not counting it", candidate.version, exc)
            continue
        return candidate
    return None


def rollback(settings: Settings, version: int, name: str | None = None,
             component: str = "cli") -> schemas.PolicyHeader:
    """Republish version ``version``'s weights, verified, as a new version on top of the latest.

    The new number is above every number on the topic, including a version the learner is still
    writing, so the rollback is the newest version whatever the learner publishes in the meantime
    (the learner adopts it and continues from it)."""
    name = name or settings.policy_name
    versions, highest = _scan(settings, name, 60.0)
    key = trust_of(settings)
    target = next((v for v in one_per_number(versions, key) if v.version == version), None)
    if target is None:
        raise PolicyNotFound(f"policy {name!r} has no complete version {version} "
                             f"(retained: {sorted({v.version for v in versions}) or 'none'})")
    model = load_version(versions, version, key)   # refuse to republish what does not verify
    newest = newest_verified(versions, key, component)
    latest = newest.version if newest is not None else target.version
    # A number taken by a version still being written counts (the learner writes latest + 1); a
    # number far beyond anything verified is a forgery and must not steer ours.
    highest = highest if highest <= latest + MAX_VERSIONS_IN_FLIGHT else latest
    metrics = {**target.header.metrics, "rollback_of": float(version)}
    publisher = PolicyPublisher(settings, component, name)
    try:
        header = publisher.publish(model, max(latest, highest) + 1, parent=latest, metrics=metrics)
    finally:
        publisher.close()
    # A learner that wrote the same number first keeps it (every reader keeps the first claimant): say so.
    landed = next((v for v in one_per_number(_scan(settings, name, 60.0)[0], key) if v.version == header.version),
                  None)
    if landed is None or landed.header.checksum != header.checksum:
        raise PolicyRaceError(f"another writer published v{header.version} at the same moment; nothing was rolled "
                              "back. Run the rollback again (or stop the learner first).")
    return header


@dataclass(frozen=True)
class LivePolicy:
    """What a reader serves: one verified version, swapped as a whole."""

    version: int
    model: TwoTowerPolicy
    header: schemas.PolicyHeader
    loaded_at: float


class PolicySubscriber:
    """Loads the latest complete, verified version, then follows new ones in a background thread.

    ``on_swap(live)`` is called with each newly verified version (from the follower
    thread); the subscriber's own ``live`` is replaced by one assignment, so readers
    of it always see a whole version. ``accept(header)``, when given, passes over the
    versions a reader has no use for before their weights are loaded and verified.
    """

    def __init__(self, settings: Settings, component: str, on_swap: Callable[[LivePolicy], None] | None = None,
                 name: str | None = None,
                 accept: Callable[[schemas.PolicyHeader], bool] | None = None) -> None:
        self.settings = settings
        self.component = component
        self.name = name or settings.policy_name
        self.on_swap = on_swap
        self.accept = accept
        self.live: LivePolicy | None = None
        self.rejections: list[tuple[int, str]] = []
        self._assembler = VersionAssembler(self.name)
        self._key = trust_of(settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._caught_up = threading.Event()
        #: Complete versions newer than the live one, not yet adopted (deltas waiting for their parent).
        self._pending: list[PolicyVersion] = []
        #: The checksum of the first trusted claimant of each recent number (``one_per_number``'s rule, live).
        self._claims: OrderedDict[int, str] = OrderedDict()
        POLICY_VERSION.labels(component).set(0)

    def start(self, wait: float = 60.0) -> PolicySubscriber:
        """Start following; return once the topic as it stood has been read (the latest version loaded)."""
        self._thread = threading.Thread(target=self._run, name=f"policy-subscriber-{self.component}", daemon=True)
        self._thread.start()
        if not self._caught_up.wait(wait):
            raise TimeoutError(f"policies topic not read to its end within {wait:.0f}s")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def caught_up(self) -> bool:
        """The topic as it stood at ``start`` has been read: what arrives now was written since."""
        return self._caught_up.is_set()

    def wait_for_version(self, version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.live is not None and self.live.version >= version:
                return True
            time.sleep(0.05)
        return False

    def _run(self) -> None:
        topic = topic_name(self.settings, "policies")
        consumer = Consumer(consumer_config(self.settings, self.component, f"policy-{self.component}-{uuid.uuid4().hex}", **{
            "enable.auto.commit": False, "enable.partition.eof": True,
            "fetch.message.max.bytes": self.settings.max_message_bytes + CHUNK_HEADROOM,
        }))
        try:
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            backlog: list[PolicyVersion] = []
            while not self._stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if not self._caught_up.is_set():
                            self._adopt(backlog)   # from the newest snapshot that verifies, its deltas on top
                            backlog.clear()
                            self._caught_up.set()
                        continue
                    log.warning("policies consumer: %s", err.str())
                    continue
                try:
                    done = self._assembler.feed(msg.key(), msg.value())
                except Exception as exc:  # noqa: BLE001 - one bad record never stops a follower
                    parsed = parse_key(msg.key())
                    self._reject(parsed[1] if parsed else 0, "format", f"{type(exc).__name__}: {exc}")
                    continue
                for version, reason, detail in self._assembler.refused:
                    self._reject(version, reason, detail)
                self._assembler.refused.clear()
                if done is None or not self._claim(done):
                    continue
                if self._caught_up.is_set():
                    self._adopt([done])
                else:
                    backlog.append(done)
        except Exception:  # noqa: BLE001 - a follower must not die silently
            log.exception("policy subscriber stopped on an unexpected error; keeping version %s",
                          self.live.version if self.live else None)
            self._caught_up.set()
        finally:
            consumer.close()

    def _claim(self, version: PolicyVersion) -> bool:
        """True when ``version`` is the first claimant of its number that a trusted writer wrote, the one
        every reader keeps; a later one (a rollback that lost a race with the learner) is refused as
        ``taken``. Every version is checked, even those this reader does not adopt: the learner must know
        that its own version took a number before a rollback's claim to it arrives."""
        held = self._claims.get(version.version)
        if held is not None:
            if held != version.header.checksum:
                self._reject(version.version, "taken", "another writer's version was written under this number "
                                                       "first, and readers keep the first")
            return False
        try:
            version.verify_authorship(self._key)
        except PolicyIntegrityError as exc:
            self._reject(version.version, exc.reason, str(exc))
            return False
        self._claims[version.version] = version.header.checksum
        while len(self._claims) > MAX_PENDING_VERSIONS:     # numbers arrive nearly in order: forget the oldest
            self._claims.popitem(last=False)
        return True

    def _adopt(self, arrived: list[PolicyVersion]) -> None:
        """Move to the newest version these make reachable: the newest full snapshot newer than the live
        one that verifies, then, one by one, each delta whose parent is the live version. A delta whose
        parent is not held waits in ``_pending`` for a snapshot; one that fails verification is dropped."""
        for version in arrived:     # what this reader never adopts is not kept (the learner: rollbacks only)
            if self.accept is None or self.accept(version.header):
                self._pending.append(version)
        while len(self._pending) > MAX_PENDING_VERSIONS:   # a reader cut off from snapshots stays bounded
            self._pending.remove(min(self._pending, key=lambda v: v.version))
        before = self.live
        while True:
            current = self.live.version if self.live else 0
            self._pending = [v for v in self._pending if v.version > current]
            fulls = sorted((v for v in self._pending if not v.is_delta), key=lambda v: v.version,
                           reverse=True)
            children = sorted((v for v in self._pending if v.is_delta and self.live is not None
                               and v.header.parent == current), key=lambda v: v.version)
            step = self._first_that_loads(fulls) if fulls else None
            if step is None and children:
                step = self._first_that_loads(children[:1])
            if step is None:
                if fulls or children:
                    continue            # the refused ones were dropped: look again
                break
            self.live = step
        waiting = sum(1 for v in self._pending if v.is_delta)
        DELTAS_WAITING.labels(self.component).set(waiting)
        if waiting and self.live is not before:
            log.info("%d delta versions wait for a snapshot (their parent is not v%s)", waiting,
                     self.live.version if self.live else "none")
        if self.live is not before and self.live is not None:
            POLICY_VERSION.labels(self.component).set(self.live.version)
            POLICY_LOADED_AT.labels(self.component).set(self.live.loaded_at)
            log.info("policy %s v%d is live in %s", self.name, self.live.version, self.component)
            if self.on_swap is not None:
                self.on_swap(self.live)

    def _first_that_loads(self, candidates: list[PolicyVersion]) -> LivePolicy | None:
        for candidate in candidates:
            try:
                model = candidate.load(self._key, base=self.live.model if candidate.is_delta and self.live else None)
            except PolicyIntegrityError as exc:
                self._pending.remove(candidate)
                self._reject(candidate.version, exc.reason, str(exc))
                continue
            return LivePolicy(candidate.version, model, candidate.header, time.time())
        return None

    def _reject(self, version: int, reason: str, detail: str) -> None:
        self.rejections.append((version, reason))
        if len(self.rejections) > MAX_REMEMBERED_REJECTIONS:
            del self.rejections[:-MAX_REMEMBERED_REJECTIONS]
        POLICY_REJECTIONS.labels(self.component, reason).inc()
        log.warning("policy %s v%d rejected (%s): %s; keeping v%s", self.name, version, reason, detail,
                    self.live.version if self.live else "none")
