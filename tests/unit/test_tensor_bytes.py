"""The safetensors writer: the library's exact bytes, without a ctypes type per tensor size."""

from __future__ import annotations

import ctypes
import gc
import hashlib

import pytest
import torch
from safetensors.torch import load, save

from models.tensor_bytes import DTYPE_NAMES, digest, to_bytes


def _every_dtype() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    tensors = {f"t{dtype}".replace("torch.", ""): (torch.randn(3, 5, generator=gen) * 50).to(dtype)
               for dtype in DTYPE_NAMES}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["a.rows"] = torch.tensor([4, 1, 9], dtype=torch.int64)
    tensors["table"] = torch.randn(1000, 16, generator=gen)
    return tensors


def test_bytes_are_the_librarys_for_every_dtype_and_shape():
    tensors = _every_dtype()
    assert to_bytes(tensors) == save(tensors)
    assert to_bytes(tensors, {"format": "x"}) == save(tensors, metadata={"format": "x"})
    assert digest(tensors) == hashlib.sha256(save(tensors)).hexdigest()


def test_the_library_reads_back_every_tensor_and_the_metadata():
    tensors = _every_dtype()
    blob = to_bytes(tensors, {"b": "2", "a": "é"})
    back = load(blob)
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    header = blob[8:8 + int.from_bytes(blob[:8], "little")].decode()
    assert header.startswith('{"__metadata__":{"a":"é","b":"2"}')


def test_a_strided_view_is_written_as_its_values():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = base.t()
    assert not view.is_contiguous()
    assert to_bytes({"v": view}) == save({"v": view.contiguous()})


def test_unsupported_tensors_are_refused_by_name():
    with pytest.raises(ValueError, match="z: dtype torch.complex64"):
        to_bytes({"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="s: only dense"):
        to_bytes({"s": torch.eye(3).to_sparse()})


def _ctypes_array_types() -> int:
    gc.collect()
    array_type = type(ctypes.c_ubyte * 1)
    return sum(1 for obj in gc.get_objects() if type(obj) is array_type)


def test_many_sizes_make_no_ctypes_types():
    """The reason this module exists: safetensors' writer keeps a ctypes type per byte size."""
    before = _ctypes_array_types()
    for rows in range(1, 120):
        state = {"rows": torch.arange(rows, dtype=torch.int64), "values": torch.ones(rows, 7)}
        to_bytes(state)
        digest(state)
    assert _ctypes_array_types() == before
    for rows in range(1, 5):
        save({"values": torch.ones(rows, 1009)})
    assert _ctypes_array_types() > before, "the probe no longer sees what it is meant to catch"
