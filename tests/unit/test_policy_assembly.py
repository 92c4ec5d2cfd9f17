"""Assembling policy versions from their records: visible only once whole, never half-retired."""

from __future__ import annotations

from stream import schemas
from stream.policy.bus import HEADER_PART, VersionAssembler, parse_key, record_key
from tests.unit.conftest import offline_settings


def header(version: int, n_chunks: int, name: str = "p") -> bytes:
    return schemas.encode(schemas.PolicyHeader(name=name, version=version, created_at=1.7e9, checksum="0" * 64,
                                               total_bytes=6, n_chunks=n_chunks))


def chunk(version: int, i: int, data: bytes, name: str = "p") -> tuple[bytes, bytes]:
    return record_key(name, version, f"c{i:05d}"), data


def test_a_version_appears_only_when_its_header_follows_every_chunk():
    asm = VersionAssembler("p")
    assert asm.feed(*chunk(1, 1, b"def")) is None
    assert asm.feed(*chunk(1, 0, b"abc")) is None
    done = asm.feed(record_key("p", 1, HEADER_PART), header(1, 2))
    assert done is not None and done.version == 1 and done.blob == b"abcdef"
    assert not asm.refused and asm.pending_bytes == 0


def test_a_header_missing_chunks_is_refused_not_held():
    asm = VersionAssembler("p")
    asm.feed(*chunk(2, 0, b"abc"))
    assert asm.feed(record_key("p", 2, HEADER_PART), header(2, 2)) is None
    assert [(v, reason) for v, reason, _ in asm.refused] == [(2, "incomplete")]


def test_chunks_no_header_follows_are_dropped_not_held_forever():
    """A publisher killed mid-write, or chunks forged without end, must not fill every reader's memory."""
    asm = VersionAssembler("p")
    for version in range(1, 101):
        for i in range(3):
            asm.feed(*chunk(version, i, b"x" * 1000))
    assert asm.pending_bytes == VersionAssembler.MAX_HEADERLESS_VERSIONS * 3000
    assert len(asm.refused) == 100 - VersionAssembler.MAX_HEADERLESS_VERSIONS
    assert {reason for _, reason, _ in asm.refused} == {"incomplete"}
    # A writer's version right after them still assembles.
    asm.feed(*chunk(200, 0, b"abc"))
    assert asm.feed(record_key("p", 200, HEADER_PART), header(200, 1)).blob == b"abc"


def test_chunks_beyond_what_a_version_may_hold_are_dropped(monkeypatch):
    monkeypatch.setattr(schemas, "MAX_POLICY_BYTES", 10_000)
    asm = VersionAssembler("p")
    for i in range(50):                      # one key, ever more chunk numbers
        asm.feed(*chunk(7, i, b"x" * 1000))
    assert asm.pending_bytes <= 10_000
    assert [(v, reason) for v, reason, _ in asm.refused][:1] == [(7, "incomplete")]


def test_bad_headers_and_foreign_records_are_refused_or_ignored():
    asm = VersionAssembler("p")
    asm.feed(*chunk(3, 0, b"abcdef"))
    assert asm.feed(record_key("p", 3, HEADER_PART), b"{not json") is None
    assert asm.feed(record_key("p", 4, HEADER_PART), header(5, 1)) is None      # key and header disagree
    assert [(v, reason) for v, reason, _ in asm.refused] == [(3, "header"), (4, "header")]
    assert asm.feed(record_key("other", 1, HEADER_PART), header(1, 1, "other")) is None
    assert asm.feed(b"garbage", b"x") is None and asm.feed(None, b"x") is None
    assert parse_key(b"p/000000000007/h") == ("p", 7, "h") and parse_key(b"p/x/h") is None


def test_a_number_outside_the_version_range_is_refused_not_dropped_silently():
    asm = VersionAssembler("p")
    for number in (0, -3, schemas.MAX_VERSION + 1):
        key = f"p/{number}/{HEADER_PART}".encode()
        assert asm.feed(key, header(1, 1)) is None
        assert asm.feed(key, None) is None       # a tombstone of it refuses nothing
    assert [(v, reason) for v, reason, _ in asm.refused] == [(0, "range"), (-3, "range"), (schemas.MAX_VERSION + 1, "range")]
    assert parse_key(f"p/{schemas.MAX_VERSION + 1}/h".encode()) is None     # nor does it steer numbering


def test_a_tombstoned_version_never_completes():
    asm = VersionAssembler("p")
    asm.feed(*chunk(1, 0, b"abcdef"))
    asm.feed(record_key("p", 1, "c00000"), None)
    assert asm.feed(record_key("p", 1, HEADER_PART), header(1, 1)) is None
    assert [reason for _, reason, _ in asm.refused] == ["incomplete"]


def test_a_forged_number_never_steers_numbering_only_a_verified_version_counts():
    """A wrong-key header at 2**53 - 1 once made the learner publish the number after it."""
    import msgspec
    import torch

    from models.policy import PolicyConfig, TwoTowerPolicy
    from models.serialization import pack
    from stream.policy.bus import PolicyVersion, newest_verified

    torch.manual_seed(0)
    model = TwoTowerPolicy(PolicyConfig(text_dim=8, dim=4, hidden=8, item_buckets=16, user_buckets=16, fast_dim=2))
    key = b"the real key"

    def version(number: int, signing: bytes | None) -> PolicyVersion:
        head, blob = pack(model, "p", number, None, {}, signing)
        return PolicyVersion(msgspec.convert(head | {"n_chunks": 1}, schemas.PolicyHeader), blob)

    genuine = [version(1, key), version(2, key)]
    forged = version(schemas.MAX_VERSION, b"someone else's key")
    unsigned = version(schemas.MAX_VERSION - 1, None)
    assert newest_verified([*genuine, unsigned, forged], key).version == 2
    assert newest_verified([forged], key) is None
    assert newest_verified(genuine, key).version == 2


def test_a_forged_claimant_of_a_number_does_not_shadow_the_genuine_chain():
    """A forged snapshot written under v2 after the genuine v2 once made every delta built on v2 unverifiable,
    and a restarted learner reused numbers already on the topic."""
    import msgspec
    import torch

    from models.delta import cpu_state, make_delta
    from models.policy import PolicyConfig, TwoTowerPolicy
    from models.serialization import pack, pack_delta
    from stream.policy.bus import PolicyVersion, load_version, newest_verified, one_per_number

    torch.manual_seed(0)
    config = PolicyConfig(text_dim=8, dim=4, hidden=8, item_buckets=16, user_buckets=16, fast_dim=2)
    key = b"the real key"
    models = [TwoTowerPolicy(config) for _ in range(3)]
    for parent, child in zip(models, models[1:]):   # each as its delta publishes it (half precision): the next base
        child.load_state_dict(make_delta(cpu_state(parent), cpu_state(child))[1])

    def claim(head: dict, blob: bytes) -> PolicyVersion:
        return PolicyVersion(msgspec.convert(head | {"n_chunks": 1}, schemas.PolicyHeader), blob)

    v1 = claim(*pack(models[0], "p", 1, None, {}, key))
    v2 = claim(*pack_delta(models[1], cpu_state(models[0]), "p", 2, 1, {}, key))
    v3 = claim(*pack_delta(models[2], cpu_state(models[1]), "p", 3, 2, {}, key))
    head, blob = pack(TwoTowerPolicy(config), "p", 2, 1, {}, key)
    forged = claim(head, blob[:-1] + bytes([blob[-1] ^ 1]))       # the same number, weights altered
    log_order = [v1, v2, forged, v3]                               # as _scan lists them: by number, then written
    assert newest_verified(log_order, key).version == 3
    rebuilt = load_version(log_order, 3, key)
    assert all(torch.equal(a, b) for a, b in zip(cpu_state(rebuilt).values(), cpu_state(models[2]).values()))
    assert [v.header.checksum for v in one_per_number(log_order, key)] == \
        [v.header.checksum for v in (v1, v2, v3)]
    # The forgery also copies the state v3 names: it still fails, and the genuine parent is found.
    copied = claim(dict(head, state=v2.header.state), blob[:-1] + bytes([blob[-1] ^ 1]))
    assert newest_verified([v1, v2, copied, v3], key).version == 3
    # With the genuine v2 gone, nothing after v1 verifies.
    assert newest_verified([v1, forged, v3], key).version == 1


def test_compaction_keeps_the_first_claimant_of_a_number_whole():
    """A rollback's full v2 and the learner's delta v2 written at the same moment once shared their record keys,
    so compaction (the last record of each key survives) left the second writer's header over the first one's
    chunks: readers that started after compaction saw the claimant that every live reader had refused."""
    import torch

    from models.delta import cpu_state
    from models.policy import PolicyConfig, TwoTowerPolicy
    from stream.policy.bus import PolicyPublisher, one_per_number

    settings = offline_settings(hmac_key="k", max_message_bytes=64 * 1024)
    written: list[tuple[bytes, bytes | None]] = []

    class Recording(PolicyPublisher):
        def _send(self, key, value):
            written.append((key, value))

        def _flush(self, what):
            pass

    torch.manual_seed(0)
    config = PolicyConfig(text_dim=8, dim=16, hidden=16, item_buckets=2048, user_buckets=2048)
    v1, rolled_back, learner = (TwoTowerPolicy(config) for _ in range(3))
    learner.load_state_dict(v1.state_dict())
    with torch.no_grad():
        learner.item_id.weight[7] += 1.0                                 # one row moved: a small delta
    publisher = Recording(settings)
    try:
        publisher.publish(v1, 1)
        first = publisher.publish(rolled_back, 2, parent=1, metrics={"rollback_of": 1.0})   # several chunks
        second = publisher.publish_delta(learner, cpu_state(v1), 2, 1)                     # one chunk
    finally:
        publisher.close()
    assert first.n_chunks > second.n_chunks == 1
    survivors = {key: i for i, (key, _) in enumerate(written)}          # compaction: each key's last record
    compacted = [written[i] for i in sorted(survivors.values())]
    asm = VersionAssembler(settings.policy_name)
    versions = [v for v in (asm.feed(k, v) for k, v in compacted) if v is not None]
    assert sorted(v.version for v in versions) == [1, 2, 2]
    kept = {v.version: v for v in one_per_number(versions, b"k")}
    assert kept[2].header.checksum == first.checksum and not asm.refused


def test_a_reader_remembers_only_its_newest_refusals():
    """Anyone who can write to the topic can write bad versions without end; the list kept for inspection must
    not grow with them (the counter counts them all)."""
    from stream.policy.bus import MAX_REMEMBERED_REJECTIONS, POLICY_REJECTIONS, PolicySubscriber

    reader = PolicySubscriber(offline_settings(hmac_key="k"), "unit-reader")
    before = POLICY_REJECTIONS.labels("unit-reader", "signature")._value.get()
    for version in range(1, 2 * MAX_REMEMBERED_REJECTIONS + 1):
        reader._reject(version, "signature", "forged")
    assert len(reader.rejections) == MAX_REMEMBERED_REJECTIONS
    assert reader.rejections[-1] == (2 * MAX_REMEMBERED_REJECTIONS, "signature")
    assert POLICY_REJECTIONS.labels("unit-reader", "signature")._value.get() == before + 2 * MAX_REMEMBERED_REJECTIONS
