"""Non-LLM baselines, vectorised with numpy/scipy. Every method is fitted on the histories
for the target being evaluated (so never on that target) and scores all items for a batch
of users; the harness masks the history and ranks the rest.

- popularity: interaction count.
- item-kNN: cosine similarity of binary item columns; a user's score is the similarity
  to the items of the whole history, or of the last n items weighted decay**age (age 0 =
  the most recent). Computed as (w D Xᵀ)(X D) per batch of users, so the item x item matrix
  is never materialised (Book-Crossing has 36 k items).
- EASE (Steck 2019): closed-form item-item ridge regression with a zero diagonal; λ is
  tuned on the validation target. Needs a dense items x items inverse, so it is skipped
  above `EASE_MAX_ITEMS` items.
- content: the seed article's method: mean-pooled BERT embeddings of the product text
  (all-MiniLM-L6-v2 via service.retrieval.encoder), the user profile is the mean of the
  last 10 items' embeddings, the score is the cosine to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from service.offline.split import history_matrix

EASE_MAX_ITEMS = 12_000
EASE_LAMBDAS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


class Method(Protocol):
    name: str

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> None: ...

    def score(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), n_items]: higher is better."""
        ...


def recency_weights(
    histories: Sequence[np.ndarray], n_items: int, last_n: int | None, decay: float
) -> sp.csr_matrix:
    """users x items: weight decay**age for each of the last `last_n` items (all if None)."""
    rows, cols, vals = [], [], []
    for u, h in enumerate(histories):
        tail = h if last_n is None else h[-last_n:]
        age = np.arange(len(tail) - 1, -1, -1, dtype=np.float64)
        rows.append(np.full(len(tail), u))
        cols.append(tail)
        vals.append(decay**age)
    if not rows:
        return sp.csr_matrix((0, n_items), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(histories), n_items),
    )


@dataclass
class Popularity:
    name: str = "popularity"
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> None:
        self.counts = np.asarray(
            history_matrix(histories, n_items).sum(0), dtype=np.float32
        ).ravel()

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(rows), len(self.counts))).copy()


@dataclass
class ItemKNN:
    """Cosine item-kNN (all neighbours) over the whole history or its last n items."""

    last_n: int | None = None
    decay: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            if self.last_n is None:
                self.name = "item-kNN (whole history)"
            else:
                tail = f", {self.decay:g}^age" if self.decay != 1.0 else ""
                self.name = f"item-kNN (last {self.last_n}{tail})"

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> None:
        x = history_matrix(histories, n_items)
        norm = np.sqrt(np.asarray(x.sum(0)).ravel())
        self.inv = np.where(norm > 0, 1.0 / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
        self.x = x
        self.xt = x.T.tocsr()  # items x users
        self.w = recency_weights(histories, n_items, self.last_n, self.decay)

    def score(self, rows: np.ndarray) -> np.ndarray:
        wd = self.w[rows].multiply(self.inv[None, :]).tocsr()  # b x items
        overlap = (wd @ self.xt).toarray()  # b x users: weighted co-occurrence with each user
        return np.asarray(overlap @ self.x, dtype=np.float32) * self.inv[None, :]


@dataclass
class EASE:
    lam: float = 200.0
    name: str = "EASE"

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> None:
        if n_items > EASE_MAX_ITEMS:
            raise ValueError(
                f"EASE needs a dense {n_items} x {n_items} inverse (limit {EASE_MAX_ITEMS})"
            )
        x = history_matrix(histories, n_items)
        self.x = x
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices_from(g)] += self.lam
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self.b = b.astype(np.float32)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.x[rows] @ self.b, dtype=np.float32)


class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class ContentMean:
    """Cosine to the mean embedding of the last `last_n` items."""

    embeddings: np.ndarray  # items x d, L2-normalised rows
    last_n: int = 10
    name: str = ""
    encoder: str = "MiniLM"

    def __post_init__(self) -> None:
        self.name = self.name or f"content ({self.encoder}, mean of last {self.last_n})"

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> None:
        if len(self.embeddings) != n_items:
            raise ValueError(f"{len(self.embeddings)} embeddings for {n_items} items")
        w = recency_weights(histories, n_items, self.last_n, 1.0)
        counts = np.asarray(w.sum(1)).ravel()
        self.profiles = (
            np.asarray(w @ self.embeddings, dtype=np.float32) / np.maximum(counts, 1)[:, None]
        )

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.profiles[rows] @ self.embeddings.T, dtype=np.float32)


def default_methods(
    n_items: int, embeddings: np.ndarray | None, encoder: str = "MiniLM"
) -> list[Method]:
    methods: list[Method] = [
        Popularity(),
        ItemKNN(),
        ItemKNN(last_n=3),
        ItemKNN(last_n=20, decay=0.5),
    ]
    if n_items <= EASE_MAX_ITEMS:
        methods.append(EASE())
    if embeddings is not None:
        methods.append(ContentMean(embeddings, encoder=encoder))
    return methods
