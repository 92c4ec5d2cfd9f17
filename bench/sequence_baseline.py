"""``sasrec``: the sequence-aware row of ``bench movielens``, the kind of model a team would train instead of
ours when it wants each user's latest ratings read at prediction time.

A SASRec-style self-attentive encoder (Kang & McAuley, ICDM 2018) over the user's last ratings, with the
movie to predict as the last token, as the Behavior Sequence Transformer (Chen et al., 2019) does for
click-through rates: a history token is the movie (its id embedding plus its MiniLM text, projected) plus
the stars given to it; the candidate token is the movie plus a "to predict" marker; the encoder's output at
the candidate goes through a linear head, with a per-movie bias. A movie never trained on scores from its
text. No user id: who the user is comes from what they rated, so a new user is read from their first
ratings. It is refit from scratch on every rating so far at each period, as a nightly job would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from bench.movielens import Ratings

#: Stars come in half steps from 0.5 to 5: ten tokens, and one more for the movie to predict.
STAR_TOKENS = 10
PREDICT = STAR_TOKENS


class _Encoder(nn.Module):
    def __init__(self, items: int, text_dim: int, history: int, dim: int, layers: int, heads: int,
                 dropout: float) -> None:
        super().__init__()
        self.item = nn.Embedding(items, dim)
        nn.init.normal_(self.item.weight, std=0.01)     # near zero: a movie not yet trained on is its text
        self.text = nn.Linear(text_dim, dim)
        self.stars = nn.Embedding(STAR_TOKENS + 1, dim)
        self.position = nn.Embedding(history + 1, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)
        self.bias = nn.Embedding(items, 1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, items: torch.Tensor, stars: torch.Tensor, padding: torch.Tensor,
                text: torch.Tensor) -> torch.Tensor:
        """Logits of a positive rating for the last token of each sequence; ``padding`` marks empty slots."""
        positions = torch.arange(items.shape[1], device=items.device)
        tokens = self.item(items) + self.text(text[items]) + self.stars(stars) + self.position(positions)
        out = self.encoder(tokens, src_key_padding_mask=padding)
        return self.head(self.norm(out[:, -1])).squeeze(-1) + self.bias(items[:, -1]).squeeze(-1)


class SelfAttentive:
    """The ``sasrec`` row. Defaults tuned on the first half of the shared MovieLens 70% (seed 1; see
    ``docs/benchmarks/notes/2026-12-07-library-tuning.md``)."""

    def __init__(self, data: Ratings, text: np.ndarray, seed: int, dim: int = 64, layers: int = 2, heads: int = 2,
                 epochs: int = 4, batch_size: int = 512, lr: float = 2e-3, dropout: float = 0.1,
                 weight_decay: float = 0.0) -> None:
        self.name, self.data, self.seed = "sasrec", data, seed
        self.text = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
        self.settings = {"dim": dim, "layers": layers, "heads": heads, "dropout": dropout}
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.stars = np.clip(np.round(data.rating * 2).astype(np.int64) - 1, 0, STAR_TOKENS - 1)
        self.trained: list[np.ndarray] = []
        self.model: _Encoder | None = None

    def _inputs(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        previous = self.data.previous[rows]
        empty = previous < 0
        safe = np.where(empty, rows[:, None], previous)
        items = np.concatenate([self.data.item[safe], self.data.item[rows][:, None]], axis=1)
        stars = np.concatenate([np.where(empty, 0, self.stars[safe]), np.full((len(rows), 1), PREDICT)], axis=1)
        padding = np.concatenate([empty, np.zeros((len(rows), 1), dtype=bool)], axis=1)
        return torch.from_numpy(items), torch.from_numpy(stars), torch.from_numpy(padding)

    def train(self, rows: np.ndarray) -> None:
        self.trained.append(rows)
        every = np.concatenate(self.trained)
        torch.manual_seed(self.seed + len(self.trained))
        model = _Encoder(len(self.data.item_ids), self.text.shape[1], self.data.previous.shape[1], **self.settings)
        optimiser = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        labels = torch.from_numpy(self.data.label)
        rng = np.random.default_rng(self.seed + len(self.trained))
        model.train()
        for _ in range(self.epochs):
            order = rng.permutation(every)
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                logits = model(*self._inputs(batch), self.text)
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.eval()
        self.model = model

    @torch.no_grad()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Each rating's probability of being positive, from the user's ratings before it."""
        if self.model is None:
            raise RuntimeError("sasrec predicts only after its first period is trained")
        out = [torch.sigmoid(self.model(*self._inputs(rows[start:start + 4096]), self.text)).numpy()
               for start in range(0, len(rows), 4096)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
