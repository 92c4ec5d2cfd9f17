"""Checkpoints without pickle: tensors in safetensors, everything else as JSON in its metadata.

A learner checkpoint sits on a shared volume; unpickling one would run whatever code a
writer to that volume put in it. Here a nested state (dicts, lists, tuples, numbers,
strings, bytes, None and tensors) is split into a flat ``{path: tensor}`` map that
safetensors stores as raw data, and a JSON skeleton in which each tensor is a
reference to its path. Reading back never executes anything. The file names its
format and version, so a foreign or newer file is refused with a clear error.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from models.tensor_bytes import to_bytes

FORMAT = "recsys-stream-checkpoint"
#: 2: a list of byte strings is one uint8 tensor (1 wrote each as base64 in the JSON, a quarter of a second
#: for the learner's held-out decisions at every checkpoint, with the learner stopped). Both are read.
FORMAT_VERSION = 2
READABLE_VERSIONS = ("1", "2")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one of ours (foreign, damaged or of a newer format)."""


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        # On the CPU and contiguous (a copy only where it is not); ``to_bytes`` writes each tensor's own
        # bytes, so views that share storage need no private copy. Names are numbered: state keys may hold dots.
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu").contiguous()
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": {k: _split(v, f"{path}.{k}", tensors) for k, v in value.items()}}
        # Optimizer state keys are ints: keep each key's type by storing pairs.
        return {"__pairs__": [[_split(k, f"{path}.k{i}", tensors), _split(v, f"{path}.{i}", tensors)]
                              for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_split(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        if value and all(isinstance(v, (bytes, bytearray)) for v in value):
            name = f"t{len(tensors)}"
            tensors[name] = torch.frombuffer(bytearray(b"".join(value)), dtype=torch.uint8)
            return {"__byte_list__": name, "lengths": [len(v) for v in value]}
        return [_split(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint {type(value).__name__} at {path or 'the root'}")


def _join(value: Any, tensors: dict[str, torch.Tensor], device: torch.device | str) -> Any:
    if isinstance(value, list):
        return [_join(v, tensors, device) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        try:
            return tensors[value["__tensor__"]].to(device)
        except KeyError as exc:
            raise CheckpointError(f"checkpoint refers to a tensor it does not hold: {value['__tensor__']}") from exc
    if "__dict__" in value:
        return {k: _join(v, tensors, device) for k, v in value["__dict__"].items()}
    if "__pairs__" in value:
        return {_join(k, tensors, device): _join(v, tensors, device) for k, v in value["__pairs__"]}
    if "__tuple__" in value:
        return tuple(_join(v, tensors, device) for v in value["__tuple__"])
    if "__bytes__" in value:
        return base64.b64decode(value["__bytes__"])
    if "__byte_list__" in value:
        try:
            data = tensors[value["__byte_list__"]].numpy().tobytes()
        except KeyError as exc:
            raise CheckpointError(f"checkpoint refers to a tensor it does not hold: {value['__byte_list__']}") from exc
        lengths = value.get("lengths")
        if not isinstance(lengths, list) or sum(lengths) != len(data) or any(
                not isinstance(n, int) or n < 0 for n in lengths):
            raise CheckpointError("damaged checkpoint: a list of byte strings does not add up to its data")
        out, start = [], 0
        for n in lengths:
            out.append(data[start:start + n])
            start += n
        return out
    raise CheckpointError(f"unknown entry in checkpoint: {sorted(value)}")


def dumps(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint of ``state``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "", tensors)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "state": json.dumps(skeleton)}
    return to_bytes(tensors, metadata=metadata)


def loads(data: bytes, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state saved by ``dumps``, its tensors on ``device``; ``CheckpointError`` for anything else."""
    if len(data) < 8:
        raise CheckpointError("not a checkpoint: too short")
    header_size = int.from_bytes(data[:8], "little")
    if header_size > len(data) - 8:
        raise CheckpointError("not a checkpoint: not a safetensors file (was it written by torch.save?)")
    try:
        header = json.loads(data[8:8 + header_size])
    except ValueError as exc:
        raise CheckpointError(f"not a checkpoint: unreadable header ({exc})") from exc
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} file (format {metadata.get('format')!r})")
    if metadata.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint format version {metadata.get('format_version')} is not one this release "
                              f"reads ({', '.join(READABLE_VERSIONS)}); written by another release of recsys-stream")
    try:
        tensors = load_tensors(data)
        skeleton = json.loads(metadata["state"])
    except (SafetensorError, KeyError, ValueError) as exc:
        raise CheckpointError(f"damaged checkpoint: {exc}") from exc
    return _join(skeleton, tensors, device)


def save(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a temporary file, fsync, rename. A crash leaves the old checkpoint or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dumps(state)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        return loads(data, device)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
