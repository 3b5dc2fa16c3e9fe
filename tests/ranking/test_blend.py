"""The LLM stage blended with its shortlist (service/ranking/blend.py): weight 0 is exactly
the shortlist, the weight fitted on a validation target never scores below the shortlist
there, the artefact reloads identically, and a corrupt one degrades the response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.ranking_blend import BlendCase, HitUser, fit_blend, ndcg10, score_hits
from service.catalog.models import Product
from service.config import Settings
from service.ranking.base import UserContext
from service.ranking.blend import BLEND_FILE, BlendError, RerankBlend, load_blend
from service.ranking.verbalizer import VerbalizerReranker
from service.recommend import Shortlist, rank_shortlist
from service.recsmith import Recsmith
from tests.fakes import FakeLLM
from tests.ranking.helpers import shortlist


def _reverse_scores(_prompt: str, choices: list[str]) -> dict[str, float]:
    """The model prefers the last label shown: the reverse of the shortlist order."""
    return {c: float(i) for i, c in enumerate(choices)}


def test_weight_zero_is_the_shortlist_and_one_the_llm(
    fake_settings: Settings, catalogue: dict[str, Product], user: UserContext
) -> None:
    cands = shortlist(catalogue, 8)
    ids = [c.product_id for c in cands]
    llm = FakeLLM(fake_settings, label_scores=_reverse_scores)  # type: ignore[arg-type]
    plain = VerbalizerReranker(llm).rank(user, cands, catalogue)
    assert [p for p, _ in plain.order] == ids[::-1]  # the LLM alone reverses the list
    zero = VerbalizerReranker(llm, blend=RerankBlend(0.0)).rank(user, cands, catalogue)
    assert [p for p, _ in zero.order] == ids and zero.meta["blend_weight"] == 0.0
    one = VerbalizerReranker(llm, blend=RerankBlend(1.0)).rank(user, cands, catalogue)
    assert [p for p, _ in one.order] == ids[::-1]
    half = VerbalizerReranker(llm, blend=RerankBlend(0.5)).rank(user, cands, catalogue)
    assert sorted(p for p, _ in half.order) == sorted(ids)  # still a permutation


def _case(target: int, llm_target_first: bool, n: int = 20) -> BlendCase:
    retrieval = [1.0 / (i + 1) for i in range(n)]
    llm = [0.0] * n
    llm[target if llm_target_first else (target + 1) % n] = 5.0
    return BlendCase("u", retrieval, llm, target)


def test_fit_never_below_the_shortlist_and_uses_a_helpful_llm() -> None:
    # An LLM that points at a wrong item: the fitted weight is 0, i.e. the shortlist.
    harmful = [_case(0, False) for _ in range(30)] + [_case(1, False) for _ in range(10)]
    blend, by_w = fit_blend(harmful, n_users=100)
    assert blend.weight == 0.0
    assert ndcg10(harmful, 100, blend.weight) == by_w["0"] == max(by_w.values())
    assert ndcg10(harmful, 100, 1.0) < by_w["0"]
    # An LLM that finds the target deep in the list: the fit takes it.
    helpful = [_case(12, True) for _ in range(20)] + [_case(0, True) for _ in range(20)]
    blend, by_w = fit_blend(helpful, n_users=100)
    assert blend.weight > 0.0
    assert ndcg10(helpful, 100, blend.weight) > by_w["0"]


def test_blend_saved_reloads_and_scores_identically(tmp_path: Path) -> None:
    blend = RerankBlend(0.35, {"validation_ndcg10_by_weight": {"0": 0.1}})
    path = blend.save(tmp_path / BLEND_FILE)
    loaded, status = load_blend(path)
    assert status.state == "fitted" and loaded is not None
    r, s = [0.9, 0.5, 0.4, 0.1], [-3.0, -0.2, -1.0, -2.0]
    assert loaded.scores(r, s) == blend.scores(r, s) and loaded.info == blend.info


@pytest.mark.parametrize(
    "text", ["{not json", json.dumps({"format": 1, "weight": 1.5}), json.dumps({"format": 9})]
)
def test_corrupt_blend_is_degraded_or_strict_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / BLEND_FILE
    path.parent.mkdir(parents=True)
    path.write_text(text)
    blend, status = load_blend(path)
    assert blend is None and status.degraded and str(path) in (status.reason or "")
    with pytest.raises(BlendError, match="rerank_blend.json"):
        load_blend(path, strict=True)
    missing, st = load_blend(tmp_path / "nope.json")
    assert missing is None and st.state == "default" and not st.degraded


def test_served_verbalizer_uses_the_saved_blend_and_a_corrupt_one_degrades(
    tmp_path: Path, catalogue: dict[str, Product], user: UserContext
) -> None:
    """rank_shortlist (what /v1/recommendations runs) applies DATA_DIR's rerank blend."""
    cands = shortlist(catalogue, 8)
    ids = [c.product_id for c in cands]
    llm = FakeLLM(Settings(data_dir=tmp_path), label_scores=_reverse_scores)  # type: ignore[arg-type]

    def serve(data_dir: Path) -> tuple[list[str], bool, list[str], str]:
        rs = Recsmith(Settings(data_dir=data_dir, database_url=""))
        sl = Shortlist(list(cands), catalogue, user, k=8)
        rec = rank_shortlist(rs, sl, "verbalizer", llm=lambda _mode: llm)
        return (
            [i.product_id for i in rec.items],
            rec.degraded,
            rec.degraded_stages,
            rec.degraded_reason or "",
        )

    none_dir, zero_dir, bad_dir = tmp_path / "none", tmp_path / "zero", tmp_path / "bad"
    assert serve(none_dir)[:2] == (ids[::-1], False)  # no blend: the LLM's order
    RerankBlend(0.0).save(zero_dir / BLEND_FILE)
    assert serve(zero_dir)[:2] == (ids, False)  # fitted weight 0: the shortlist exactly
    (bad_dir / BLEND_FILE).parent.mkdir(parents=True)
    (bad_dir / BLEND_FILE).write_text("{not json")
    order, degraded, stages, reason = serve(bad_dir)
    assert order == ids[::-1] and degraded and "rerank_blend" in stages
    assert "blend is unusable" in reason


def test_eval_scores_hit_users_in_batches_and_resumes(
    fake_settings: Settings, catalogue: dict[str, Product], tmp_path: Path
) -> None:
    """eval.ranking_blend.score_hits: `batch` users per model call, the served scores
    (`rank`) for each user, and a run cut short continues from its JSON-lines file without
    scoring anyone twice."""
    cands = shortlist(catalogue, 8)
    ids, scores = [c.product_id for c in cands], [c.score for c in cands]
    hist = list(catalogue)[:3]
    hits = [HitUser(f"u{i}", hist, ids, scores, i % 8) for i in range(5)]
    llm = FakeLLM(fake_settings, label_scores=_reverse_scores)  # type: ignore[arg-type]
    rr = VerbalizerReranker(llm)
    resume = tmp_path / "scores.jsonl"
    first = score_hits(hits, catalogue, rr, budget_s=0.0, batch=2, resume=resume)
    assert first["scored"] == 2 and len(resume.read_text().splitlines()) == 2  # one batch
    assert [n for _, n in llm.calls] == [2]  # two users' prompts in one call
    served = dict(
        rr.rank(UserContext(history=[catalogue[p] for p in hist]), cands, catalogue).order
    )
    assert first["cases"][0].llm == [served[p] for p in ids]
    llm.calls.clear()
    rest = score_hits(hits, catalogue, rr, batch=2, resume=resume)
    assert rest["resumed"] == 2 and rest["scored"] == 5
    assert sorted(c.user_id for c in rest["cases"]) == [f"u{i}" for i in range(5)]
    assert [n for _, n in llm.calls] == [2, 1]  # only the three not yet scored
