"""Tensors to safetensors bytes, and their SHA-256, without the ctypes that safetensors uses.

``safetensors.torch.save`` views each tensor's memory as a ctypes ``c_ubyte * size`` array.
ctypes keeps every array type it makes, one per distinct size, for the life of the process,
and each view leaves a reference cycle for the collector. A learner publishing deltas of
ever-changing sizes therefore grew without bound (0.6 new types a second in a soak). Here
the bytes come from ``Tensor.numpy()``, which makes neither.

The output is byte for byte what ``safetensors.torch.save`` writes for the same tensors
(same order: wider dtypes first, then by name; same compact JSON header padded with
spaces to 8 bytes), so checksums made by older releases still match. Metadata keys are
written sorted, where safetensors writes them in hash order. The library still reads
everything (``safetensors.torch.load``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Mapping

import torch

#: safetensors' dtype names, listed in its serialisation order (widest first).
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.uint64: "U64",
    torch.int64: "I64",
    torch.float64: "F64",
    torch.float32: "F32",
    torch.uint32: "U32",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.uint16: "U16",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_RANK = {dtype: rank for rank, dtype in enumerate(DTYPE_NAMES)}
_ALIGNMENT = 8


def _raw(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in memory order, without a copy when it is a dense CPU tensor."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


def _layout(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> tuple[bytes, list[str]]:
    """(length prefix + padded JSON header, tensor names in the order their bytes follow)."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors is little-endian; this writer does not byte-swap")
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {tensor.dtype} is not one this writer supports")
        if tensor.layout != torch.strided:
            raise ValueError(f"{name}: only dense tensors can be written, not {tensor.layout}")
    order = sorted(tensors, key=lambda n: (_RANK[tensors[n].dtype], n))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(metadata[k]) for k in sorted(metadata)}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % _ALIGNMENT)
    return len(text).to_bytes(8, "little") + text, order


def _parts(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> Iterator[bytes | memoryview]:
    head, order = _layout(tensors, metadata)
    yield head
    for name in order:
        yield _raw(tensors[name])


def to_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors file of ``tensors`` (and text ``metadata``)."""
    return b"".join(_parts(tensors, metadata))


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of ``to_bytes(tensors)``, without building those bytes."""
    sha = hashlib.sha256()
    for part in _parts(tensors, None):
        sha.update(part)
    return sha.hexdigest()
