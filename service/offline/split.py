"""The LlamaRec protocol: leave the last two items of each user's time-ordered history out.

Each user's interactions are sorted by time. Ties in time keep the log's original order
by default (a stable sort), or are ordered by item index (`tie_break="item_id"`, which is
how the reference figures in the notes were made: 44 % of ML-100k users share one timestamp
between their last two items, so the choice moves the numbers). A repeated item keeps only
its first occurrence, so a target is always an item new to that user. The last item is
the test target, the one before it the validation target; users with fewer than 3
distinct items are dropped. The input for the test target is everything before it (the
validation item included); the input for the validation target is everything before that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Literal

import numpy as np
import scipy.sparse as sp

from service.offline.datasets import Dataset

Target = Literal["val", "test"]
TieBreak = Literal["original", "item_id"]
MIN_ITEMS = 3


@dataclass
class Split:
    item_ids: list[str]  # item index -> product id (the canonical order of the data set)
    users: list[str]
    sequences: list[np.ndarray]  # item indices, oldest first, first occurrences only
    tie_break: TieBreak
    dropped_users: int = 0

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def history(self, target: Target) -> list[np.ndarray]:
        """Per user, the items the model may see when predicting `target`."""
        return [user_history(s, target)[0] for s in self.sequences]

    def targets(self, target: Target) -> np.ndarray:
        return np.array([user_history(s, target)[1] for s in self.sequences], dtype=np.int64)

    def matrix(self, target: Target) -> sp.csr_matrix:
        """Binary user x item matrix of the histories for `target`: what a model may be fitted
        on. It holds no user's `target` item (nor, for "val", any test item)."""
        return history_matrix(self.history(target), self.n_items)

    def subset(self, rows: Sequence[int]) -> Split:
        rows = list(rows)
        return Split(
            self.item_ids,
            [self.users[r] for r in rows],
            [self.sequences[r] for r in rows],
            self.tie_break,
            self.dropped_users,
        )


def user_history(seq: np.ndarray, target: Target) -> tuple[np.ndarray, int]:
    """(history, target item) for one user's sequence: the target is the last item ("test")
    or the one before it ("val"); the history is strictly what came before the target."""
    if len(seq) < MIN_ITEMS:
        raise ValueError(f"a sequence needs at least {MIN_ITEMS} items, got {len(seq)}")
    cut = len(seq) - 1 if target == "test" else len(seq) - 2
    return seq[:cut], int(seq[cut])


def history_matrix(histories: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
    data = np.ones(len(cols), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(histories), n_items))


def leave_last_two_out(ds: Dataset, tie_break: TieBreak = "original") -> Split:
    item_ids = [p.id for p in ds.products]
    index = {pid: i for i, pid in enumerate(item_ids)}
    user_codes: dict[str, int] = {}
    u = np.empty(len(ds.interactions), dtype=np.int64)
    it = np.empty(len(ds.interactions), dtype=np.int64)
    ts = np.empty(len(ds.interactions), dtype=np.float64)
    for n, x in enumerate(ds.interactions):
        u[n] = user_codes.setdefault(x.user_id, len(user_codes))
        it[n] = index[x.product_id]
        ts[n] = x.naive_utc_ts().replace(tzinfo=UTC).timestamp()
    order_key = np.arange(len(it)) if tie_break == "original" else it
    # lexsort: last key is primary -> by user, then time, then the tie-break (all stable).
    order = np.lexsort((order_key, ts, u))
    u, it = u[order], it[order]
    bounds = np.flatnonzero(np.diff(u)) + 1
    users = list(user_codes)
    out_users: list[str] = []
    seqs: list[np.ndarray] = []
    dropped = 0
    for chunk_u, chunk in zip(np.split(u, bounds), np.split(it, bounds), strict=True):
        if len(chunk) == 0:
            continue
        _, first = np.unique(chunk, return_index=True)
        seq = chunk[np.sort(first)]  # first occurrence of each item, in time order
        if len(seq) < MIN_ITEMS:
            dropped += 1
            continue
        out_users.append(users[chunk_u[0]])
        seqs.append(seq)
    return Split(item_ids, out_users, seqs, tie_break, dropped)
