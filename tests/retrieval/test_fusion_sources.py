"""The next-item transition source (CoInteraction.next_neighbours) that the fitted fusion
weighs next to item-kNN: directed, recency-weighted, cosine-normalised, and listed by the
retriever (weight 0 until a fusion weighs it)."""

from __future__ import annotations

import math
from collections import Counter

from service.retrieval.cooccur import CoInteraction
from service.retrieval.retriever import Retriever


def _log(seqs: dict[str, list[str]]) -> list[tuple[str, str, str, int]]:
    return [(u, p, "purchase", t) for u, seq in seqs.items() for t, p in enumerate(seq)]


SEQS = {
    "u1": ["a", "b", "c", "d"],
    "u2": ["a", "b", "e"],
    "u3": ["c", "a", "f"],
    "u4": ["b", "c", "g", "a"],
}


def _brute(history: list[str], window: int, last_n: int, decay: float) -> dict[str, float]:
    users_with = Counter(p for seq in SEQS.values() for p in set(seq))
    trans: Counter[tuple[str, str]] = Counter()
    for seq in SEQS.values():
        for j, b in enumerate(seq):
            for d in range(1, window + 1):
                if j - d >= 0 and seq[j - d] != b:
                    trans[(seq[j - d], b)] += 1.0 / d
    recent = list(dict.fromkeys(reversed(history)))[:last_n]
    out: Counter[str] = Counter()
    for age, a in enumerate(recent):
        for (x, b), c in trans.items():
            if x == a and b not in recent:
                out[b] += decay**age * c / math.sqrt(users_with[a] * users_with[b])
    return dict(out)


def test_next_neighbours_match_the_directed_formula() -> None:
    co = CoInteraction.build(_log(SEQS), knn_last_n=20, knn_decay=0.5)
    history = ["c", "b", "a"]
    got = dict(co.next_neighbours(history, 10))
    want = _brute(history, co.next_window, 20, 0.5)
    assert got.keys() == {k for k, v in want.items() if v > 0}
    for k, v in want.items():
        assert math.isclose(got[k], v, rel_tol=1e-5)
    # Directed: after "a" come b, e, f, c, d (in u1, u2, u3) but never what preceded it
    # only; "g" only ever came before "a".
    assert "g" not in dict(co.next_neighbours(["a"], 10))
    assert "g" in dict(co.recent_neighbours(["a"], 10))  # the symmetric item-kNN has it


def test_a_new_sequence_is_seen_after_an_update() -> None:
    co = CoInteraction.build(_log(SEQS))
    assert "z" not in dict(co.next_neighbours(["d"], 10))
    co._set_sequence("u5", ["d", "z"])  # what apply_events does for a user's new events
    co.popularity["z"] += 1
    assert "z" in dict(co.next_neighbours(["d"], 10))


def test_retriever_lists_it_unweighted_until_a_fusion_weighs_it() -> None:
    r = Retriever.__new__(Retriever)
    from service.retrieval.retriever import SourceWeights

    r.weights = SourceWeights()
    assert r.source_weight("next_item") == 0.0 == r.source_weight("item_knn")
