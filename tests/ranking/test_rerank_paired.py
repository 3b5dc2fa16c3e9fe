"""eval/rerank_paired.py: two verbalizers' saved scores over the same shortlists give exact
all-user rows, per-user paired differences, and blend weights fitted on the same users."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eval.ranking_blend import BlendCase
from eval.rerank_paired import compare, label_stats, main, user_ndcg

N = 5  # shortlist size in these cases


def _case(user: str, target: int, llm: list[float]) -> BlendCase:
    return BlendCase(user, [float(N - i) for i in range(N)], llm, target)


def _first(target: int) -> list[float]:
    """LLM scores that put the target first, the rest in shortlist order."""
    return [10.0 if i == target else -float(i) for i in range(N)]


def _last(target: int) -> list[float]:
    """LLM scores that put the target last."""
    return [-10.0 if i == target else -float(i) for i in range(N)]


def _shortlists(val: dict[str, int], test: dict[str, int], users: int) -> dict:
    def hits(t: dict[str, int]) -> list[dict]:
        return [{"user_id": u, "target": k, "candidates": [], "history": []} for u, k in t.items()]

    return {
        "dataset": "ml-100k",
        "targets": {
            "val": {"users": users, "hits": hits(val)},
            "test": {"users": users, "hits": hits(test)},
        },
    }


def test_rows_are_exact_over_all_users_and_differences_are_paired() -> None:
    val = {"a": 2, "b": 3}
    test = {"c": 1, "d": 4, "e": 0}
    sl = _shortlists(val, test, users=10)  # 10 users, 3 test hits: the other 7 score 0
    runs = {
        "untuned": {
            "val": {u: _case(u, k, _last(k)) for u, k in val.items()},
            "test": {u: _case(u, k, _last(k)) for u, k in test.items()},
        },
        "tuned": {
            "val": {u: _case(u, k, _first(k)) for u, k in val.items()},
            "test": {u: _case(u, k, _first(k)) for u, k in test.items()},
        },
    }
    res = compare(sl, runs)
    # The target-last LLM never helps on validation: its blend falls back to the shortlist.
    assert res["weights"]["untuned"] == 0.0 and res["weights"]["tuned"] > 0.0
    w = res["weights"]["tuned"]
    assert res["val"]["ndcg10_all_users"][f"tuned blend (w={w:g})"] == pytest.approx(0.2)
    t = res["test"]
    assert t["exact"] and t["scored_by_all_runs"] == 3
    shortlist = sum(1 / math.log2(k + 2) for k in test.values()) / 10
    assert t["ndcg10_all_users"]["shortlist"] == pytest.approx(shortlist)
    assert t["ndcg10_all_users"]["tuned alone"] == pytest.approx(3 / 10)
    pair = t["paired_per_hit_user"]["tuned alone - untuned alone"]
    per_user = [1 - 1 / math.log2(N + 1)] * 3  # rank 1 vs rank N for every user
    assert pair["mean"] == pytest.approx(sum(per_user) / 3) and pair["se"] == pytest.approx(0)
    assert user_ndcg(runs["tuned"]["test"]["d"], 0.0) == pytest.approx(1 / math.log2(6))
    flat = label_stats([BlendCase("f", [0.0] * N, [0.0] * N, 0)])
    assert flat["entropy"] == pytest.approx(math.log(N)) and flat["p_first"] == pytest.approx(0.2)
    assert t["label_distribution"]["tuned"]["top_is_first"] == pytest.approx(1 / 3)  # user e
    assert t["label_distribution"]["untuned"]["top_is_first"] == pytest.approx(2 / 3)  # c, d


def test_missing_users_make_the_rows_inexact_and_weights_use_common_users() -> None:
    val = {"a": 2, "b": 3}
    test = {"c": 1, "d": 4}
    sl = _shortlists(val, test, users=4)
    runs = {
        "untuned": {
            "val": {u: _case(u, k, _first(k)) for u, k in val.items()},
            "test": {u: _case(u, k, _first(k)) for u, k in test.items()},
        },
        "tuned": {"val": {"a": _case("a", 2, _first(2))}, "test": {"c": _case("c", 1, _first(1))}},
    }
    res = compare(sl, runs)
    assert res["weights_fitted_on_val_users"] == 1
    assert not res["test"]["exact"] and res["test"]["ndcg10_all_users"] is None
    assert res["test"]["scored_by_all_runs"] == 1


def test_cli_names_a_missing_shortlists_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--shortlists", str(tmp_path / "no.json"), "--base", "x", "--tuned", "y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no.json" in err[0]
