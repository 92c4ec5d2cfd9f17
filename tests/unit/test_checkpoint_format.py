"""The checkpoint format: byte-string lists as one tensor, version 1 files still read, damage refused."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from models import checkpoint
from models.tensor_bytes import to_bytes


def test_a_list_of_byte_strings_round_trips_as_one_tensor():
    held = [b"", b"\x00\xff", b'{"event_id": "a"}' * 50, bytes(range(256))]
    data = checkpoint.dumps({"holdout": held, "mixed": [b"a", 1], "t": torch.arange(3)})
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    skeleton = json.loads(header["__metadata__"]["state"])
    assert "__byte_list__" in skeleton["__dict__"]["holdout"]          # no base64 in the JSON
    loaded = checkpoint.loads(data)
    assert loaded["holdout"] == held and loaded["mixed"] == [b"a", 1] and torch.equal(loaded["t"], torch.arange(3))


def test_version_1_files_still_load():
    skeleton = {"__dict__": {"holdout": [{"__bytes__": base64.b64encode(b"abc").decode()}], "t": {"__tensor__": "t0"}}}
    data = to_bytes({"t0": torch.ones(2)}, metadata={"format": checkpoint.FORMAT, "format_version": "1",
                                                     "state": json.dumps(skeleton)})
    loaded = checkpoint.loads(data)
    assert loaded["holdout"] == [b"abc"] and torch.equal(loaded["t"], torch.ones(2))


def test_lengths_that_do_not_add_up_are_refused():
    data = checkpoint.dumps({"holdout": [b"abc", b"de"]})
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    state = json.loads(header["__metadata__"]["state"])
    state["__dict__"]["holdout"]["lengths"] = [3, 9]
    tensors = {"t0": torch.frombuffer(bytearray(b"abcde"), dtype=torch.uint8)}
    forged = to_bytes(tensors, metadata={**header["__metadata__"], "state": json.dumps(state)})
    with pytest.raises(checkpoint.CheckpointError, match="add up"):
        checkpoint.loads(forged)
    newer = to_bytes(tensors, metadata={**header["__metadata__"], "format_version": "9"})
    with pytest.raises(checkpoint.CheckpointError, match="another release"):
        checkpoint.loads(newer)
