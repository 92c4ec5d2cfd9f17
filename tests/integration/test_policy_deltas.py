"""Delta policy versions over the wire: catch-up from a snapshot, a missing parent, tampering, rollback."""

from __future__ import annotations

import pytest
import torch

from models.delta import cpu_state, make_delta, state_checksum
from models.policy import PolicyConfig, TwoTowerPolicy
from models.serialization import pack_delta
from stream.policy.bus import DELTAS_WAITING, PolicyPublisher, PolicySubscriber, read_versions, rollback

SMALL = PolicyConfig(user_features=4, text_dim=8, dim=16, hidden=16, item_buckets=4096, user_buckets=4096)


def trained(parent: TwoTowerPolicy, rows: list[int], seed: int) -> TwoTowerPolicy:
    """``parent`` after an update that moved a few embedding rows and the dense layers, as a delta of it
    publishes it (half-precision values: what readers hold, and so the base of the next delta)."""
    torch.manual_seed(seed)
    child = TwoTowerPolicy(SMALL)
    child.load_state_dict(parent.state_dict())
    with torch.no_grad():
        child.item_id.weight[rows] += torch.randn(len(rows), SMALL.dim)
        child.user_id.weight[rows[0]] += 0.5
        child.text_proj.weight.mul_(1.01)
    child.load_state_dict(make_delta(cpu_state(parent), cpu_state(child))[1])
    return child


def same_state(a: TwoTowerPolicy, b: TwoTowerPolicy) -> bool:
    return state_checksum(cpu_state(a)) == state_checksum(cpu_state(b))


def catch_up(settings):
    """(the version, the refusals) of a reader started now, once it has read the whole topic."""
    late = PolicySubscriber(settings, "scorer-late").start()
    late.stop()
    return late.live, late.rejections


@pytest.fixture()
def chain(settings, topics):
    """v1 full, then v2 and v3 as deltas: the published models and the publisher."""
    publisher = PolicyPublisher(settings, "learner")
    torch.manual_seed(0)
    v1 = TwoTowerPolicy(SMALL)
    v2, v3 = trained(v1, [3, 99], 1), None
    v3 = trained(v2, [7], 2)
    publisher.publish(v1, 1)
    publisher.publish_delta(v2, cpu_state(v1), 2, 1)
    publisher.publish_delta(v3, cpu_state(v2), 3, 2)
    yield publisher, [v1, v2, v3]
    publisher.close()


def test_a_late_reader_catches_up_from_the_snapshot_and_its_deltas_and_follows_new_ones(settings, chain):
    publisher, (v1, v2, v3) = chain
    versions = read_versions(settings)
    assert [(v.version, v.header.kind) for v in versions] == [(1, "full"), (2, "delta"), (3, "delta")]
    assert max(v.header.total_bytes for v in versions[1:]) < versions[0].header.total_bytes / 10
    swaps = []
    subscriber = PolicySubscriber(settings, "scorer", on_swap=lambda live: swaps.append(live.version)).start()
    try:
        assert subscriber.live.version == 3 and same_state(subscriber.live.model, v3) and swaps == [3]
        v4 = trained(v3, [11], 3)
        publisher.publish_delta(v4, cpu_state(v3), 4, 3)
        assert subscriber.wait_for_version(4, 20) and same_state(subscriber.live.model, v4)
    finally:
        subscriber.stop()


def test_a_delta_whose_parent_is_missing_waits_for_a_snapshot(settings, chain):
    publisher, (v1, v2, v3) = chain
    subscriber = PolicySubscriber(settings, "scorer").start()
    try:
        assert subscriber.live.version == 3
        # v5 is a delta of a v4 this reader never saw (lost, or still being written): it must not be applied.
        v4 = trained(v3, [20], 4)
        v5 = trained(v4, [21], 5)
        key = settings.hmac_key.get_secret_value().encode()
        header, blob = pack_delta(v5, cpu_state(v4), settings.policy_name, 5, 4, key=key)
        publisher.publish_packed(header, blob)
        assert not subscriber.wait_for_version(5, 3)
        assert subscriber.live.version == 3 and DELTAS_WAITING.labels("scorer")._value.get() == 1
        v6 = trained(v5, [22], 6)
        publisher.publish(v6, 6, parent=5)                           # a snapshot: the reader catches up
        assert subscriber.wait_for_version(6, 20) and same_state(subscriber.live.model, v6)
        assert DELTAS_WAITING.labels("scorer")._value.get() == 0
        assert subscriber.rejections == []
    finally:
        subscriber.stop()


def test_a_tampered_delta_is_refused_and_the_old_version_keeps_serving(settings, chain):
    publisher, (v1, v2, v3) = chain
    subscriber = PolicySubscriber(settings, "scorer").start()
    try:
        key = settings.hmac_key.get_secret_value().encode()
        v4 = trained(v3, [30], 7)
        header, blob = pack_delta(v4, cpu_state(v3), settings.policy_name, 4, 3, key=key)
        tampered = bytearray(blob)
        tampered[-10] ^= 0x40
        publisher.publish_packed(header, bytes(tampered))
        forged = dict(header, state="0" * 64)        # a header altered without the key
        publisher.publish_packed({**forged, "version": 5, "parent": 3}, blob)
        v6 = trained(v3, [31], 8)
        publisher.publish_delta(v6, cpu_state(v3), 6, 3)   # a genuine delta of the state it still holds
        assert subscriber.wait_for_version(6, 20)
        assert subscriber.rejections == [(4, "checksum"), (5, "signature")]
        assert same_state(subscriber.live.model, v6)
    finally:
        subscriber.stop()


def test_rollback_to_a_delta_publishes_a_full_snapshot_that_readers_and_the_learner_adopt(settings, chain):
    publisher, (v1, v2, v3) = chain
    scorer = PolicySubscriber(settings, "scorer").start()
    learner = PolicySubscriber(settings, "learner", accept=lambda header: "rollback_of" in header.metrics).start()
    try:
        assert learner.live is None                      # the learner follows rollbacks only
        rolled = rollback(settings, 2)
        assert (rolled.version, rolled.kind, rolled.metrics["rollback_of"]) == (4, "full", 2.0)
        assert scorer.wait_for_version(4, 20) and learner.wait_for_version(4, 20)
        assert same_state(scorer.live.model, v2) and same_state(learner.live.model, v2)
        v5 = trained(v2, [40], 9)                        # the learner goes on in deltas from the rollback
        publisher.publish_delta(v5, cpu_state(learner.live.model), 5, 4)
        assert scorer.wait_for_version(5, 20) and same_state(scorer.live.model, v5)
    finally:
        scorer.stop()
        learner.stop()


def test_a_forged_claimant_after_the_genuine_version_does_not_displace_it(settings, chain):
    """A forged header reusing a published number, read after the genuine one (in one catch-up or
    live), never displaces it: the genuine version and its children still reach every reader."""
    publisher, (v1, v2, v3) = chain
    following = PolicySubscriber(settings, "scorer").start()
    try:
        key = settings.hmac_key.get_secret_value().encode()
        v4 = trained(v3, [50], 10)
        publisher.publish_delta(v4, cpu_state(v3), 4, 3)
        header, blob = pack_delta(v4, cpu_state(v3), settings.policy_name, 4, 3, key=key)
        publisher.publish_packed(dict(header, state="0" * 64), blob)     # the same number, altered without the key
        v5 = trained(v4, [51], 11)
        publisher.publish_delta(v5, cpu_state(v4), 5, 4)
        assert following.wait_for_version(5, 20) and same_state(following.live.model, v5)
        live, _ = catch_up(settings)                                      # all of it in one catch-up
        assert live.version == 5 and same_state(live.model, v5)
    finally:
        following.stop()


def test_when_a_rollback_and_the_learner_take_one_number_every_reader_keeps_the_first_written(settings, chain):
    """The closed-loop test once saw a rollback's v9 land just before the learner's own delta v9: followers
    held the rollback, the learner went on from its own v9, and every later delta was refused (parent)."""
    publisher, (v1, v2, v3) = chain
    following = PolicySubscriber(settings, "scorer").start()
    learner = PolicySubscriber(settings, "learner", accept=lambda header: "rollback_of" in header.metrics).start()
    try:
        # The rollback writes v4 first; the learner's delta v4 of v3 lands after it.
        publisher.publish(v1, 4, parent=3, metrics={"rollback_of": 1.0})
        orphan = trained(v3, [60], 12)
        publisher.publish_delta(orphan, cpu_state(v3), 4, 3)
        assert learner.wait_for_version(4, 20) and same_state(learner.live.model, v1)   # the learner is told
        assert following.wait_for_version(4, 20) and same_state(following.live.model, v1)
        # The learner's next version is a full snapshot above every number it used.
        v5 = trained(v1, [61], 13)
        publisher.publish(v5, 5, parent=4)
        assert following.wait_for_version(5, 20) and same_state(following.live.model, v5)
        live, refused = catch_up(settings)
        assert live.version == 5 and same_state(live.model, v5)
        assert (4, "taken") in refused                                  # the learner's v4 came second

        # Now the learner's delta v6 lands first and a rollback's v6 second: the rollback lost.
        v6 = trained(v5, [62], 14)
        publisher.publish_delta(v6, cpu_state(v5), 6, 5)
        publisher.publish(v2, 6, parent=5, metrics={"rollback_of": 2.0})
        v7 = trained(v6, [63], 15)
        publisher.publish_delta(v7, cpu_state(v6), 7, 6)
        assert following.wait_for_version(7, 20) and same_state(following.live.model, v7)
        assert learner.live.version == 4 and (6, "taken") in learner.rejections   # never offered to the learner
        live, _ = catch_up(settings)
        assert live.version == 7 and same_state(live.model, v7)
    finally:
        following.stop()
        learner.stop()


def test_a_rollback_that_loses_its_number_to_the_learner_says_so(settings, chain, monkeypatch):
    """The learner writes v4 between the rollback's scan and its write: readers keep the learner's v4,
    so the rollback must report that nothing was rolled back."""
    from stream.policy import bus

    publisher, (v1, v2, v3) = chain
    scan = bus._scan
    calls = []

    def scan_then_learner_writes(settings_, name, timeout):
        found = scan(settings_, name, timeout)
        if not calls:
            publisher.publish_delta(trained(v3, [70], 16), cpu_state(v3), 4, 3)
        calls.append(1)
        return found

    monkeypatch.setattr(bus, "_scan", scan_then_learner_writes)
    with pytest.raises(bus.PolicyRaceError, match="v4"):
        rollback(settings, 1)
