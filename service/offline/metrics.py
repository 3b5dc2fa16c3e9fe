"""Ranking metrics for one held-out target per user.

With a single relevant item, Recall@K is 1 if the target is in the top K, NDCG@K is
1/log2(rank+1) if it is (the ideal DCG is 1), and MRR is the mean of 1/rank over the full
ranking (not truncated). Full ranking means every item the user has not interacted with.

Two ways to turn scores into a rank: `stable` (equal scores are ordered by item index, i.e.
by item id: deterministic, what the report uses) and `expected` (the expected value of each
metric when equal scores are put in random order), kept to show how much ties matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KS = (5, 10, 20)


# -- one ranked list -------------------------------------------------------------------------
def rank_of(ranked: Sequence[str], target: str) -> int | None:
    """1-based position of target in ranked, None if absent."""
    for pos, item in enumerate(ranked, start=1):
        if item == target:
            return pos
    return None


def recall_at_k(ranked: Sequence[str], target: str, k: int) -> float:
    r = rank_of(ranked, target)
    return 1.0 if r is not None and r <= k else 0.0


def ndcg_at_k(ranked: Sequence[str], target: str, k: int) -> float:
    r = rank_of(ranked, target)
    return float(1.0 / np.log2(r + 1)) if r is not None and r <= k else 0.0


def reciprocal_rank(ranked: Sequence[str], target: str) -> float:
    r = rank_of(ranked, target)
    return 1.0 / r if r is not None else 0.0


def shortlist_recall(shortlist: Sequence[str], target: str) -> float:
    """Recall@N of a candidate shortlist (N = its length): is the target in it at all."""
    return 1.0 if target in set(shortlist) else 0.0


# -- many users at once, from ranks ---------------------------------------------------------
def summarize(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean Recall@K, NDCG@K and MRR from 1-based target ranks (np.inf = not ranked)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if len(ranks) == 0:
        return out
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(ranks <= k))
    for k in ks:
        out[f"ndcg@{k}"] = float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0)))
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


@dataclass
class TargetRanks:
    """Where the target stands among the candidates for each user."""

    greater: np.ndarray  # candidates scored strictly higher than the target
    equal: np.ndarray  # other candidates scored exactly as the target
    stable: np.ndarray  # 1-based rank with ties ordered by item index

    def expected(self, ks: Sequence[int] = KS) -> dict[str, float]:
        return expected_metrics(self.greater, self.equal, ks)


def target_ranks(scores: np.ndarray, targets: np.ndarray, seen: np.ndarray) -> TargetRanks:
    """scores [users, items]; targets [users] item indices; seen [users, items] bool, True
    for items excluded from the ranking (the history). The target itself is never seen."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(targets))
    if np.any(seen[rows, targets]):
        raise ValueError("a target is marked as seen: it would be excluded from its own ranking")
    t = scores[rows, targets][:, None]
    valid = ~seen
    higher = valid & (scores > t)
    same = valid & (scores == t)
    before = np.arange(scores.shape[1])[None, :] < targets[:, None]
    greater = higher.sum(1)
    equal = same.sum(1) - 1
    stable = 1 + greater + (same & before).sum(1)
    return TargetRanks(greater, equal, stable.astype(np.float64))


def expected_metrics(
    greater: np.ndarray, equal: np.ndarray, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Each metric's expectation when the target's rank is uniform over greater+1 ..
    greater+equal+1 (ties in random order)."""
    greater = np.asarray(greater, dtype=np.int64)
    equal = np.asarray(equal, dtype=np.int64)
    n = int((greater + equal).max(initial=0)) + 2
    pos = np.arange(1, n + 1, dtype=np.float64)
    lo, hi = greater, greater + equal + 1  # rank range [lo+1, hi]
    count = (equal + 1).astype(np.float64)

    def mean_over(values: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(values)])
        return (c[hi] - c[lo]) / count

    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(mean_over((pos <= k).astype(np.float64))))
    for k in ks:
        out[f"ndcg@{k}"] = float(
            np.mean(mean_over(np.where(pos <= k, 1.0 / np.log2(pos + 1), 0.0)))
        )
    out["mrr"] = float(np.mean(mean_over(1.0 / pos)))
    return out


def ranks_from_lists(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based ranks of each target in its list (np.inf when absent)."""
    out = np.full(len(targets), np.inf)
    for n, (lst, t) in enumerate(zip(ranked, targets, strict=True)):
        r = rank_of(lst, t)
        if r is not None:
            out[n] = r
    return out
