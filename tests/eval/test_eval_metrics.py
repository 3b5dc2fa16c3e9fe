"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.offline.metrics import (
    expected_metrics,
    ndcg_at_k,
    rank_of,
    ranks_from_lists,
    recall_at_k,
    reciprocal_rank,
    shortlist_recall,
    summarize,
    target_ranks,
)

RANKED = ["a", "b", "c", "d", "e", "f"]


def test_one_list_by_hand() -> None:
    assert rank_of(RANKED, "c") == 3
    assert recall_at_k(RANKED, "c", 2) == 0.0
    assert recall_at_k(RANKED, "c", 3) == 1.0
    assert ndcg_at_k(RANKED, "a", 5) == 1.0
    assert ndcg_at_k(RANKED, "c", 5) == pytest.approx(0.5)  # 1 / log2(3 + 1)
    assert ndcg_at_k(RANKED, "b", 5) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(RANKED, "f", 5) == 0.0
    assert reciprocal_rank(RANKED, "d") == 0.25
    assert reciprocal_rank(RANKED, "z") == 0.0
    assert recall_at_k(RANKED, "z", 20) == 0.0


def test_shortlist_recall() -> None:
    assert shortlist_recall(RANKED[:3], "b") == 1.0
    assert shortlist_recall(RANKED[:3], "d") == 0.0


def test_summarize_by_hand() -> None:
    ranks = ranks_from_lists([RANKED, RANKED, RANKED], ["a", "b", "z"])
    assert list(ranks) == [1.0, 2.0, np.inf]
    m = summarize(ranks, ks=(1, 5))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["mrr"] == pytest.approx((1 + 0.5) / 3)


def test_target_ranks_ties_and_seen_items() -> None:
    # items:        0    1    2    3    4
    scores = np.array([[3.0, 1.0, 2.0, 2.0, 5.0]])
    seen = np.array([[False, False, False, False, True]])  # item 4 is in the history
    tr = target_ranks(scores, np.array([3]), seen)
    # Above the target: item 0 (item 4 is excluded); tied: item 2, which has a lower id.
    assert tr.greater.tolist() == [1]
    assert tr.equal.tolist() == [1]
    assert tr.stable.tolist() == [3.0]
    exp = expected_metrics(tr.greater, tr.equal, ks=(2, 3))
    assert exp["recall@2"] == pytest.approx(0.5)  # rank 2 or 3, equally likely
    assert exp["recall@3"] == pytest.approx(1.0)
    assert exp["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert exp["ndcg@2"] == pytest.approx(0.5 / math.log2(3))


def test_target_rank_uses_item_order_for_ties() -> None:
    scores = np.zeros((2, 4))
    seen = np.zeros((2, 4), dtype=bool)
    tr = target_ranks(scores, np.array([0, 3]), seen)
    assert tr.stable.tolist() == [1.0, 4.0]
    exp = expected_metrics(tr.greater, tr.equal, ks=(1,))
    assert exp["recall@1"] == pytest.approx(0.25)


def test_expected_equals_stable_without_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((50, 30))
    seen = rng.random((50, 30)) < 0.2
    targets = np.array([np.flatnonzero(~row)[0] for row in seen])
    tr = target_ranks(scores, targets, seen)
    assert summarize(tr.stable) == pytest.approx(tr.expected())


def test_a_seen_target_is_an_error() -> None:
    with pytest.raises(ValueError, match="seen"):
        target_ranks(np.zeros((1, 3)), np.array([1]), np.array([[False, True, False]]))
