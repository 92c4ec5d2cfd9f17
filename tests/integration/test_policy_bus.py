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
