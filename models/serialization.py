"""A policy version as an immutable artifact: safetensors weights plus a JSON header.

The header carries the model config, version, parent, creation time and metrics,
the SHA-256 of the weights and, when a key is configured, an HMAC-SHA256 signature
over the header and that checksum. Loading verifies all of it and the tensor
shapes against the config before anything reaches a live model. No pickle anywhere:
safetensors holds only raw tensors.

A version is ``full`` (all weights) or a ``delta`` of its parent (``models/delta.py``).
Both name the whole state they stand for (``state``, the SHA-256 of its full weights);
a delta also names the state it applies onto (``parent_state``), inside the signature.
A delta loads only onto that exact state, and the result must hash to ``state``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from models.delta import DEFAULT_TOLERANCE, DeltaError, State, apply_delta, cpu_state, make_delta, state_checksum
from models.policy import PolicyConfig, TwoTowerPolicy
from models.tensor_bytes import to_bytes

#: Header fields covered by the signature (transport fields like n_chunks are not).
SIGNED_FIELDS = ("name", "version", "parent", "created_at", "model_config", "metrics", "checksum", "total_bytes",
                 "kind", "state", "parent_state")


class PolicyIntegrityError(ValueError):
    """A policy artifact failed verification; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _signature(header: dict[str, Any], key: bytes) -> str:
    payload = json.dumps({k: header.get(k) for k in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def _header(config: PolicyConfig, blob: bytes, name: str, version: int, parent: int | None,
            metrics: dict[str, float] | None, key: bytes | None, created_at: float | None, kind: str, state: str,
            parent_state: str | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {
        "name": name,
        "version": int(version),
        "parent": parent,
        "created_at": float(created_at if created_at is not None else time.time()),
        "model_config": config.to_dict(),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "checksum": hashlib.sha256(blob).hexdigest(),
        "total_bytes": len(blob),
        "kind": kind,
        "state": state,
        "parent_state": parent_state,
        "signature": None,
    }
    if key:
        header["signature"] = _signature(header, key)
    return header


def pack(
    model: TwoTowerPolicy,
    name: str,
    version: int,
    parent: int | None = None,
    metrics: dict[str, float] | None = None,
    key: bytes | None = None,
    created_at: float | None = None,
) -> tuple[dict[str, Any], bytes]:
    """(header, weights) of a full version: the header is JSON-ready; the weights are safetensors bytes."""
    blob = to_bytes(cpu_state(model))
    header = _header(model.config, blob, name, version, parent, metrics, key, created_at, "full",
                     hashlib.sha256(blob).hexdigest())
    return header, blob


def pack_delta(
    model: TwoTowerPolicy,
    base: State,
    name: str,
    version: int,
    parent: int,
    metrics: dict[str, float] | None = None,
    key: bytes | None = None,
    created_at: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    changes: State | None = None,
) -> tuple[dict[str, Any], bytes]:
    """(header, delta bytes) of ``model`` as a delta of ``base``, the parent's published state; what
    readers rebuild is ``make_delta(base, model)[1]``. ``changes``: that delta, already made (then ``model``
    must hold the state it rebuilds, as the learning loop's candidate does)."""
    if changes is None:
        delta, published = make_delta(base, cpu_state(model), tolerance)
    else:
        delta, published = changes, cpu_state(model)
    blob = to_bytes(delta)
    header = _header(model.config, blob, name, version, parent, metrics, key, created_at, "delta",
                     state_checksum(published), state_checksum(base))
    return header, blob


def verify_authorship(header: dict[str, Any], blob: bytes, key: bytes | Sequence[bytes] | None = None,
                      require_signature: bool = False) -> None:
    """Raise PolicyIntegrityError unless ``blob`` is what ``header`` names and the header is signed by
    ``key``: proof of who wrote a version, without loading it. Readers use it to decide which of two
    claimants of one version number counts (the first that passes, in topic order)."""
    keys = [key] if isinstance(key, bytes) else [k for k in (key or []) if k]
    if len(blob) != header.get("total_bytes"):
        raise PolicyIntegrityError("size", f"weights are {len(blob)} bytes, header says {header.get('total_bytes')}")
    digest = hashlib.sha256(blob).hexdigest()
    if not hmac.compare_digest(digest, str(header.get("checksum"))):
        raise PolicyIntegrityError("checksum", f"weights hash to {digest[:16]}..., header says "
                                               f"{str(header.get('checksum'))[:16]}...")
    if keys:
        signature = header.get("signature")
        if not signature:
            raise PolicyIntegrityError("unsigned", "a signing key is configured but the version is not signed")
        if not any(hmac.compare_digest(_signature(header, k), str(signature)) for k in keys):
            raise PolicyIntegrityError("signature", "HMAC signature does not match (wrong key or altered header)")
    elif require_signature:
        raise PolicyIntegrityError("unsigned", "no signing key is configured here, so no version can be "
                                               "trusted (set RECSYS_HMAC_KEY, or RECSYS_ALLOW_UNSIGNED=1)")


def unpack(header: dict[str, Any], blob: bytes, key: bytes | Sequence[bytes] | None = None,
           require_signature: bool = False, base: TwoTowerPolicy | None = None) -> TwoTowerPolicy:
    """A verified model, or PolicyIntegrityError naming what did not match.

    ``key`` may be several keys (a rotation: the new one and the previous one); the signature
    must match one of them. With no key, ``require_signature`` refuses everything as unsigned:
    without a key nothing proves who wrote a version. A delta needs ``base``, the model of the
    exact state it was made from (``parent`` otherwise).
    """
    verify_authorship(header, blob, key, require_signature)
    try:
        config = PolicyConfig.from_dict(header["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyIntegrityError("config", f"invalid model_config: {exc}") from exc
    try:
        tensors = load_tensors(blob)
    except (SafetensorError, ValueError) as exc:
        raise PolicyIntegrityError("format", f"not a safetensors payload: {exc}") from exc
    kind = header.get("kind") or "full"
    if kind == "delta":
        if base is None:
            raise PolicyIntegrityError("parent", f"v{header.get('version')} is a delta of v{header.get('parent')}, "
                                                 "which is not here")
        base_state = cpu_state(base)
        if state_checksum(base_state) != header.get("parent_state"):
            raise PolicyIntegrityError("parent", f"v{header.get('version')} applies onto another state of "
                                                 f"v{header.get('parent')} than the one held")
        try:
            tensors = apply_delta(base_state, tensors)
        except DeltaError as exc:
            raise PolicyIntegrityError("shape", str(exc)) from exc
    elif kind != "full":
        raise PolicyIntegrityError("header", f"unknown kind {kind!r}")
    model = TwoTowerPolicy(config)
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    got = {n: tuple(t.shape) for n, t in tensors.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        wrong = sorted(n for n in set(expected) & set(got) if expected[n] != got[n])
        detail = "; ".join(part for part in (
            f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "",
            ", ".join(f"{n} is {got[n]} not {expected[n]}" for n in wrong)) if part)
        raise PolicyIntegrityError("shape", detail)
    if kind == "delta" and state_checksum(tensors) != header.get("state"):
        raise PolicyIntegrityError("checksum", "the delta applied onto its parent does not give the state its "
                                               "header names")
    model.load_state_dict(tensors)
    return model.eval()

