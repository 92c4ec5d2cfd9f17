"""The policy bus over the wire: chunked versions, follow and swap, tamper refusal, rollback, CLI."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from pydantic import SecretStr

from models.policy import PolicyConfig, TwoTowerPolicy
from models.serialization import _signature, pack
from stream.policy.bus import (
    PolicyPublisher,
    PolicySubscriber,
    read_versions,
    record_key,
    rollback,
)
from tests.conftest import cli_command

SMALL = PolicyConfig(user_features=4, text_dim=8, dim=16, hidden=16, item_buckets=4096, user_buckets=4096)


def model(seed: int) -> TwoTowerPolicy:
    torch.manual_seed(seed)
    return TwoTowerPolicy(SMALL)


def same_weights(a: TwoTowerPolicy, b: TwoTowerPolicy) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture()
def small_messages(settings, topics):
    # Force chunking: ~0.5 MB of weights in 48 KiB chunks.
    return settings.model_copy(update={"max_message_bytes": 64 * 1024})


def test_versions_are_chunked_followed_swapped_and_tampering_is_refused(small_messages):
    settings = small_messages
    publisher = PolicyPublisher(settings, "learner")
    first, second = model(1), model(2)
    publisher.publish(first, 1)
    publisher.publish(second, 2, parent=1, metrics={"dr": 0.5})

    swaps = []
    subscriber = PolicySubscriber(settings, "scorer", on_swap=lambda live: swaps.append(live.version)).start()
    try:
        # On start only the newest complete version is loaded.
        assert subscriber.live.version == 2 and swaps == [2]
        assert same_weights(subscriber.live.model, second)
        versions = read_versions(settings)
        assert [v.version for v in versions] == [1, 2] and versions[1].header.n_chunks > 5
        assert versions[1].header.metrics == {"dr": 0.5}

        third = model(3)
        publisher.publish(third, 3, parent=2)
        assert subscriber.wait_for_version(3, 20)
        assert same_weights(subscriber.live.model, third)

        # A version whose bytes do not match its header is refused; the reader keeps v3.
        key = settings.hmac_key.get_secret_value().encode()
        header, blob = pack(model(4), settings.policy_name, 4, parent=3, key=key)
        tampered = bytearray(blob)
        tampered[len(tampered) // 2] ^= 0xFF
        publisher.publish_packed(header, bytes(tampered))
        # A version with the wrong tensor shapes is refused as well.
        wrong = TwoTowerPolicy(PolicyConfig(**{**SMALL.to_dict(), "dim": 8}))
        header, blob = pack(wrong, settings.policy_name, 5, parent=3)
        header["model_config"] = SMALL.to_dict()
        header["signature"] = _signature(header, key)       # signed as it is: only the shapes are wrong
        publisher.publish_packed(header, blob)
        fifth = model(6)
        publisher.publish(fifth, 6, parent=3)
        assert subscriber.wait_for_version(6, 20)
        assert subscriber.rejections == [(4, "checksum"), (5, "shape")]
        assert swaps == [2, 3, 6]

        # Roll back to v1: its weights come back as a new version, and readers swap to it.
        rolled = rollback(settings, 1)
        assert (rolled.version, rolled.parent, rolled.metrics["rollback_of"]) == (7, 6, 1.0)
        assert subscriber.wait_for_version(7, 20)
        assert same_weights(subscriber.live.model, first)

        # A version still being written (chunks, no header yet) holds its number: a rollback goes above it.
        publisher._send(record_key(settings.policy_name, 8, "c00000"), b"partial")
        publisher._flush("a chunk of v8")
        rolled = rollback(settings, 2)
        assert (rolled.version, rolled.parent) == (9, 7)      # parent: the newest complete version
        assert subscriber.wait_for_version(9, 20)
    finally:
        subscriber.stop()
        publisher.close()


def test_a_reader_with_a_key_refuses_unsigned_or_wrongly_signed_versions(small_messages):
    unsigned = small_messages.model_copy(update={"hmac_key": None, "allow_unsigned": True})
    signed = small_messages.model_copy(update={"hmac_key": SecretStr("right-key")})
    wrong = small_messages.model_copy(update={"hmac_key": SecretStr("wrong-key")})
    PolicyPublisher(signed, "learner").publish(model(1), 1)
    PolicyPublisher(unsigned, "learner").publish(model(2), 2)
    PolicyPublisher(wrong, "learner").publish(model(3), 3)
    subscriber = PolicySubscriber(signed, "scorer").start()
    try:
        # v2 (unsigned) and v3 (bad signature) are refused as they arrive; v1 is served.
        assert subscriber.live.version == 1
        assert subscriber.rejections == [(2, "unsigned"), (3, "signature")]
    finally:
        subscriber.stop()


def test_policy_cli_lists_shows_and_rolls_back(small_messages, cli_env):
    settings = small_messages
    env = {**cli_env, "RECSYS_MAX_MESSAGE_BYTES": str(settings.max_message_bytes)}
    publisher = PolicyPublisher(settings, "learner")
    publisher.publish(model(1), 1, metrics={"dr": 0.25})
    publisher.publish(model(2), 2, parent=1)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(cli_command("policy", *args), env=env, capture_output=True, text=True, timeout=120)

    listed = run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["version"], r["parent"]) for r in json.loads(listed.stdout)["versions"]] == [(1, None), (2, 1)]
    shown = run("show", "1", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["verified"] is True
    assert json.loads(shown.stdout)["metrics"] == {"dr": 0.25}
    missing = run("show", "9")
    assert missing.returncode == 1 and "no complete version 9" in missing.stderr
    rolled = run("rollback", "1", "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["version"] == 3
    assert [v.version for v in read_versions(settings)] == [1, 2, 3]
    assert run("rollback", "8").returncode == 1


def test_a_version_number_above_the_range_is_refused_and_counted(small_messages):
    from confluent_kafka import Producer

    from stream import schemas
    from stream.kafka.clients import base_config
    from stream.kafka.topics import topic_name
    from stream.policy.bus import POLICY_REJECTIONS

    settings = small_messages
    PolicyPublisher(settings, "learner").publish(model(1), 1)
    beyond = schemas.MAX_VERSION + 1
    raw = Producer(base_config(settings, "forger"))
    raw.produce(topic_name(settings, "policies"), key=f"{settings.policy_name}/{beyond}/h.0123456789abcdef".encode(),
                value=b'{"name": "default"}')
    assert raw.flush(10) == 0
    counted = POLICY_REJECTIONS.labels("range-reader", "range")
    before = counted._value.get()
    subscriber = PolicySubscriber(settings, "range-reader").start()
    try:
        assert subscriber.live.version == 1
        assert subscriber.rejections == [(beyond, "range")]
        assert counted._value.get() == before + 1
    finally:
        subscriber.stop()


def test_policy_show_names_why_a_version_does_not_verify(small_messages, cli_env):
    settings = small_messages.model_copy(update={"hmac_key": SecretStr("right-key")})
    PolicyPublisher(settings, "learner").publish(model(1), 1)
    PolicyPublisher(settings.model_copy(update={"hmac_key": None, "allow_unsigned": True}), "learner").publish(model(2), 2)
    PolicyPublisher(settings.model_copy(update={"hmac_key": SecretStr("wrong-key")}), "learner").publish(model(3), 3)
    env = {**cli_env, "RECSYS_MAX_MESSAGE_BYTES": str(settings.max_message_bytes), "RECSYS_HMAC_KEY": "right-key"}
    for version, reason in ((2, "unsigned"), (3, "signature")):
        shown = subprocess.run(cli_command("policy", "show", str(version), "--json"), env=env, capture_output=True,
                               text=True, timeout=120)
        assert shown.returncode == 1, shown.stderr
        problem = json.loads(shown.stdout)["problem"]
        assert problem.startswith(f"{reason}:") and "not on the topic" not in problem, problem


def test_retired_versions_vanish_for_readers_in_one_batch(settings, topics):
    """Tombstones of several versions go out in one flush: a broker that keeps every batch (the embedded
    one) gains one batch per retirement, not one per version; readers no longer assemble any of them."""
    from stream.kafka.batch_census import BatchCensus
    from stream.kafka.topics import topic_name

    publisher = PolicyPublisher(settings, "learner")
    headers = [publisher.publish(model(v), v, parent=v - 1 or None) for v in range(1, 6)]
    topic = topic_name(settings, "policies")
    host, port = settings.bootstrap_servers.rsplit(":", 1)
    with BatchCensus(host, int(port)) as census:
        census.update({topic: 1})
        before = census.update({topic: 1})[topic].batches
        publisher.retire(*headers[:4])
        census.update({topic: 1})
        assert census.update({topic: 1})[topic].batches == before + 1
    assert [v.version for v in read_versions(settings)] == [5]
