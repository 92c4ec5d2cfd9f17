"""Policy artifacts: verified checksum, signature and shapes; no pickle."""

from __future__ import annotations

import copy

import pytest
import torch

from models.policy import PolicyConfig, TwoTowerPolicy
from models.serialization import PolicyIntegrityError, pack, unpack

CFG = PolicyConfig(user_features=4, text_dim=8, dim=8, item_buckets=64, user_buckets=64)


@pytest.fixture()
def artifact():
    torch.manual_seed(0)
    model = TwoTowerPolicy(CFG)
    header, blob = pack(model, "default", 3, parent=2, metrics={"dr": 0.4}, key=b"k1")
    return model, header, blob


def test_round_trip_restores_identical_weights(artifact):
    model, header, blob = artifact
    loaded = unpack(header, blob, key=b"k1")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    assert header["version"] == 3 and header["parent"] == 2 and len(header["checksum"]) == 64
    assert b"pickle" not in blob[:200] and blob[8:9] == b"{"  # safetensors: u64 length then JSON


def test_tampered_byte_is_refused(artifact):
    _, header, blob = artifact
    tampered = bytearray(blob)
    tampered[-5] ^= 0x01
    with pytest.raises(PolicyIntegrityError) as info:
        unpack(header, bytes(tampered), key=b"k1")
    assert info.value.reason == "checksum"


def test_wrong_key_and_missing_signature_are_refused(artifact):
    _, header, blob = artifact
    with pytest.raises(PolicyIntegrityError) as info:
        unpack(header, blob, key=b"k2")
    assert info.value.reason == "signature"
    unsigned = dict(header, signature=None)
    with pytest.raises(PolicyIntegrityError) as info:
        unpack(unsigned, blob, key=b"k1")
    assert info.value.reason == "unsigned"


def test_altered_header_breaks_the_signature(artifact):
    _, header, blob = artifact
    with pytest.raises(PolicyIntegrityError) as info:
        unpack(dict(header, version=99), blob, key=b"k1")
    assert info.value.reason == "signature"


def test_wrong_shape_is_refused():
    torch.manual_seed(0)
    bigger = TwoTowerPolicy(PolicyConfig(user_features=4, text_dim=8, dim=16, item_buckets=64, user_buckets=64))
    header, blob = pack(bigger, "default", 1)
    header = copy.deepcopy(header)
    header["model_config"]["dim"] = 8  # claims a smaller model than the weights hold
    with pytest.raises(PolicyIntegrityError) as info:
        unpack(header, blob)
    assert info.value.reason == "shape" and "item_id.weight" in str(info.value)


def test_size_mismatch_and_garbage_are_refused(artifact):
    _, header, blob = artifact
    with pytest.raises(PolicyIntegrityError) as info:
        unpack(header, blob[:-1])
    assert info.value.reason == "size"
    import hashlib

    junk = b"\x00" * len(blob)
    forged = dict(header, checksum=hashlib.sha256(junk).hexdigest(), signature=None)
    with pytest.raises(PolicyIntegrityError) as info:
        unpack(forged, junk)
    assert info.value.reason == "format"
