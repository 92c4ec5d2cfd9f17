"""Signed by default: what a process may publish and adopt, and a key rotation's window."""

from __future__ import annotations

import pytest
import torch
from pydantic import SecretStr

from models.policy import PolicyConfig, TwoTowerPolicy
from models.serialization import PolicyIntegrityError, pack, unpack
from stream.config import Settings
from stream.policy.trust import Trust, UnsignedRefused, announce, new_key, trust_of

SMALL = PolicyConfig(user_features=4, text_dim=8, dim=4, hidden=8, item_buckets=16, user_buckets=16, fast_dim=2)


def version(key: bytes | None):
    torch.manual_seed(0)
    return pack(TwoTowerPolicy(SMALL), "p", 1, key=key)


def test_without_a_key_a_role_does_not_start_unless_unsigned_is_allowed_explicitly():
    with pytest.raises(UnsignedRefused, match="RECSYS_HMAC_KEY is not set"):
        announce(Settings(), "learner")
    assert announce(Settings(allow_unsigned=True), "learner").allow_unsigned
    assert announce(Settings(hmac_key=SecretStr(new_key())), "scorer").signing_key


def test_without_a_key_nothing_verifies_unless_unsigned_is_allowed():
    header, blob = version(None)
    with pytest.raises(PolicyIntegrityError) as refused:
        unpack(header, blob, [], require_signature=True)
    assert refused.value.reason == "unsigned"
    assert unpack(header, blob, [], require_signature=False) is not None


def test_the_previous_key_verifies_during_its_window_and_not_after():
    old, new = b"old-key", b"new-key"
    trust = Trust(new, previous_key=old, previous_until=1_000.0)
    header, blob = version(old)
    assert unpack(header, blob, trust.verification_keys(now=999.0)) is not None        # inside the window
    with pytest.raises(PolicyIntegrityError) as refused:
        unpack(header, blob, trust.verification_keys(now=1_001.0))                      # after it
    assert refused.value.reason == "signature"
    header, blob = version(new)
    assert unpack(header, blob, trust.verification_keys(now=1_001.0)) is not None       # the new key, always


def test_a_previous_key_without_a_deadline_is_refused():
    with pytest.raises(UnsignedRefused, match="UNTIL"):
        trust_of(Settings(hmac_key=SecretStr("a"), hmac_previous_key=SecretStr("b")))


def test_new_keys_are_long_and_different():
    a, b = new_key(), new_key()
    assert len(a) == 64 and a != b and int(a, 16) >= 0
