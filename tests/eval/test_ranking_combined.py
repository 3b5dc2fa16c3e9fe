"""The combined ranking report: the goal ratio against the strongest baseline, minutes
beside the metrics, and the blend section's exact/estimated scope."""

from __future__ import annotations

from eval.ranking import PIPELINE, MethodResult, RankingRun
from eval.ranking_combined import combined


def _r(name: str, kind: str, ndcg: float, users: int = 100) -> MethodResult:
    test = {"ndcg@10": ndcg, "recall@10": 2 * ndcg, "recall@20": 3 * ndcg, "mrr": ndcg}
    return MethodResult(
        name, kind, users, test, shortlist_recall=3 * ndcg, latency_ms=600.0,
        params={"fit_s": 30.0} if kind == "baseline" else {},
    )  # fmt: skip


def _run() -> RankingRun:
    stats = {"products": 5, "users": 100, "interactions": 900}
    timings = {"recsmith_setup_incl_fusion_fit": 120.0, "recsmith": 300.0}
    run = RankingRun("toy", stats, "item_id", 100, 100, 0, timings_s=timings)
    run.results = [_r("pop", "baseline", 0.02), _r("knn", "baseline", 0.08),
                   _r("src", "retrieval", 0.05), _r(PIPELINE, "retrieval", 0.1)]  # fmt: skip
    return run


def test_summary_has_the_ratio_and_minutes() -> None:
    text = combined([(_run(), "recsmith eval ranking --dataset toy")], None)
    assert "knn **(strongest baseline)**" in text
    assert "= **1.25×**" in text  # 0.1 / 0.08
    assert "fit 0.5, eval 1.0" in text  # the baseline's fit 30 s, 100 users x 600 ms
    assert "fit+stores 2.0" in text and "Command: `recsmith eval ranking --dataset toy`" in text


def test_blend_section_says_whether_it_is_exact() -> None:
    got = {"users": 100, "hit_users": 10, "scored": 5, "shortlist_s": 1, "llm_s": 2, "wall_s": 3}
    blend = {
        "backend": "llamacpp", "weight": 0.0, "test_scale_to_all_users": 2.0,
        "test_ndcg10_by_weight_on_scored": {"0": 0.03, "0.5": 0.02, "1": 0.01},
        "val_ndcg10_by_weight": {"0": 0.04, "1": 0.03},
        "targets": {"val": dict(got, scored=10), "test": got},
        "wall_s": 60, "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1],
    }  # fmt: skip
    text = combined([(_run(), "")], blend)
    assert "estimate from 5 of 10 hit users" in text
    assert "| shortlist (w = 0) | 0.0600 |" in text and "| LLM alone (w = 1) | 0.0200 |" in text
    blend["targets"]["test"] = dict(got, scored=10)  # type: ignore[index]
    assert "all users (exact)" in combined([(_run(), "")], blend)
