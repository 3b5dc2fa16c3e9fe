"""Learned source fusion: fitting beats equal weights on the validation target, a saved
artefact reloads and scores identically, and the service falls back (or, strict, fails)
when the artefact is missing or unreadable."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.recsmith import Recsmith
from service.retrieval.fusion import Fusion, FusionError, load_fusion
from service.retrieval.retriever import Retriever
from service.training.fusion_fit import build_data, fit_fusion, target_ranks
from tests.eval.fakes import HashEncoder

ITEMS = [f"i{n:03d}" for n in range(200)]


def synthetic(users: int, seed: int) -> tuple[list[dict], list[str]]:
    """Per user: a "good" source that ranks the target near its top, and two correlated
    "junk" sources that agree on other items (as two weak content sources would)."""
    rng = random.Random(seed)
    lists, targets = [], []
    for _ in range(users):
        target = rng.choice(ITEMS)
        others = [i for i in ITEMS if i != target]
        rng.shuffle(others)
        pos = rng.randrange(0, 6)
        good = others[:pos] + [target] + others[pos:39]
        junk = others[40:80]
        lists.append(
            {
                "good": [(p, 1.0 - n / 100) for n, p in enumerate(good)],
                "junk_a": [(p, 0.9 - n / 100) for n, p in enumerate(junk)],
                "junk_b": [(p, 0.8 - n / 100) for n, p in enumerate(junk[::2] + junk[1::2])],
            }
        )
        targets.append(target)
    return lists, targets


def test_fitted_fusion_beats_equal_weights_on_the_validation_target() -> None:
    lists, targets = synthetic(60, seed=1)
    fit = fit_fusion(lists, targets, {"good": 1.0, "junk_a": 1.0, "junk_b": 1.0})
    # Equal-weight RRF lets the junk sources push the target down; the fit learns not to.
    assert fit.fitted["ndcg@10"] > fit.baseline["ndcg@10"] + 0.05
    assert fit.fusion.rank_weights["junk_a"] < fit.fusion.rank_weights["good"]
    assert fit.cross_fit["ndcg@10"] > fit.baseline["ndcg@10"]  # holds on unseen users
    info = fit.fusion.info
    assert info["validation"]["fitted"]["ndcg@10"] == pytest.approx(fit.fitted["ndcg@10"], 1e-3)
    assert info["created_at"] and info["users"] == 60


def test_fit_objective_ranks_exactly_as_the_service_fuses() -> None:
    """The ranks the fit optimises are the ranks Retriever.fuse serves (ties by id)."""
    lists, targets = synthetic(25, seed=2)
    fusion = Fusion({"good": 2.0, "junk_a": 0.5, "junk_b": 1.0}, {"junk_b": 0.01}, rrf_k=30.0)
    retriever = Retriever(lambda t: np.zeros((len(t), 4)), None, None, None, fusion=fusion)  # type: ignore[arg-type]
    sources = sorted(lists[0])
    data = build_data(lists, targets, sources, fusion.rrf_k)
    rw = np.array([fusion.rank_weights[s] for s in sources])
    sw = np.array([fusion.score_weights.get(s, 0.0) for s in sources])
    fitted_ranks = target_ranks(data, rw, sw)
    for ranked, target, rank in zip(lists, targets, fitted_ranks, strict=True):
        served = [c.product_id for c in retriever.fuse(ranked, 10**6)]
        assert served.index(target) + 1 == rank


def test_saved_fusion_reloads_and_scores_identically(tmp_path: Path) -> None:
    lists, targets = synthetic(30, seed=3)
    fusion = fit_fusion(lists, targets, {"good": 1.0, "junk_a": 1.0, "junk_b": 1.0}).fusion
    path = fusion.save(tmp_path / "artefacts" / "fusion.json")
    loaded, status = load_fusion(path)
    assert status.state == "fitted" and loaded is not None
    assert loaded == fusion
    for ranked in lists:
        assert loaded.scores(ranked) == fusion.scores(ranked)


def _recsmith(tmp_path: Path, **settings: object) -> Recsmith:
    rs = Recsmith(Settings(data_dir=tmp_path, database_url="", **settings))  # type: ignore[arg-type]
    rs.__dict__["encoder"] = HashEncoder()
    return rs


def test_service_loads_the_artefact_at_start_up(tmp_path: Path) -> None:
    fusion = Fusion({"co_interaction": 2.0, "item_knn": 3.0, "dense_history": 0.0})
    fusion.info["encoder_id"] = HashEncoder().model_id
    fusion.save(Settings(data_dir=tmp_path).fusion_file)
    rs = _recsmith(tmp_path)
    assert rs.retriever.fusion == fusion
    assert rs.fusion_status is not None and rs.fusion_status.state == "fitted"


def test_missing_artefact_means_todays_defaults(tmp_path: Path) -> None:
    rs = _recsmith(tmp_path)
    assert rs.retriever.fusion is None
    assert rs.fusion_status is not None and rs.fusion_status.state == "default"
    assert not rs.fusion_status.degraded


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"format": 1, "rank_weights": {"dense_history": "high"}}),
     json.dumps({"format": 99, "rank_weights": {"x": 1}}), "[]"],
)  # fmt: skip
def test_corrupt_artefact_warns_and_falls_back(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = Settings(data_dir=tmp_path).fusion_file
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="service.retrieval.fusion"):
        rs = _recsmith(tmp_path)
        assert rs.retriever.fusion is None
    status = rs.fusion_status
    assert status is not None and status.degraded and str(path) in (status.reason or "")
    assert any("unusable" in r.getMessage() for r in caplog.records)


def test_strict_mode_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FusionError, match="no fusion artefact at .*fusion.json"):
        _recsmith(tmp_path, fusion_strict=True)
    path = Settings(data_dir=tmp_path).fusion_file
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    with pytest.raises(FusionError, match="fusion.json is unusable"):
        _recsmith(tmp_path, fusion_strict=True)
    Fusion({"co_interaction": 1.0}, info={"encoder_id": "another-encoder"}).save(path)
    rs = _recsmith(tmp_path, fusion_strict=True)  # readable: start-up passes
    with pytest.raises(FusionError, match="another-encoder"):
        rs.retriever  # noqa: B018 - the encoder check needs the encoder
