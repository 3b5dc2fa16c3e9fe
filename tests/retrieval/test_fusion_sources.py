"""The next-item transition source (CoInteraction.next_neighbours) that the fitted fusion
weighs next to item-kNN: directed, recency-weighted, cosine-normalised, and listed by the
retriever (weight 0 until a fusion weighs it)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from service.offline.datasets import load_movielens_100k, slice_users
from service.offline.pipeline import Reporter, application_over, source_lists
from service.offline.split import leave_last_two_out
from service.retrieval.cooccur import CoInteraction
from service.retrieval.fusion import Fusion, load_fusion
from service.retrieval.retriever import Retriever, SourceWeights
from service.training.fusion_fit import build_data, fit_fusion, metrics, target_ranks
from tests.eval.fakes import HashEncoder


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

    r.weights = SourceWeights()
    assert r.source_weight("next_item") == 0.0 == r.source_weight("item_knn")


def test_on_a_movielens_slice_the_fitted_fusion_beats_equal_weights(tmp_path) -> None:  # noqa: ANN001
    """Real source lists (the service's Retriever over a store of validation histories,
    next_item included) for 120 ML-100k users: the fusion fitted on their validation items
    ranks those items better than equal weights, and the saved artefact ranks identically."""
    ds = slice_users(load_movielens_100k(), 120, seed=5)
    split = leave_last_two_out(ds, "item_id")
    rows = np.arange(len(split.users))
    app = application_over(tmp_path / "val", HashEncoder(), ds, split, "val")
    try:
        lists, _ = source_lists(app.engine, split, rows, "val", 50, Reporter())
    finally:
        app.close(timeout_s=10)
    assert all("next_item" in ranked for ranked in lists)
    tg = split.targets("val")
    targets = [split.item_ids[tg[r]] for r in rows]
    sources = sorted({s for ranked in lists for s in ranked})
    equal = Fusion({s: 1.0 for s in sources})
    fitted = fit_fusion(lists, targets, {s: 1.0 for s in sources}).fusion

    def ndcg(f: Fusion) -> float:
        data = build_data(lists, targets, sources, f.rrf_k)
        rw = np.array([f.rank_weights.get(s, 0.0) for s in sources])
        sw = np.array([f.score_weights.get(s, 0.0) for s in sources])
        return metrics(target_ranks(data, rw, sw))["ndcg@10"]

    assert ndcg(fitted) > ndcg(equal)
    loaded, status = load_fusion(fitted.save(tmp_path / "artefacts" / "fusion.json"))
    assert status.state == "fitted" and loaded is not None
    assert all(loaded.scores(r) == fitted.scores(r) for r in lists)
    assert ndcg(loaded) == ndcg(fitted)
