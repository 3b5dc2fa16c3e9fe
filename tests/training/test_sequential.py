"""The SASRec retriever: it learns a sequential pattern, saves and reloads exactly, and a
missing or corrupted model is a clear error (strict) or a quiet fallback (the service)."""

from __future__ import annotations

import logging
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from eval.learned import evaluate_sequential, sasrec_cases
from eval.ranking import MethodResult, sample_rows
from service.catalog.ingest import ingest_file
from service.catalog.models import Interaction, Product
from service.catalog.store import CatalogStore
from service.config import Settings
from service.offline.datasets import Dataset
from service.offline.split import leave_last_two_out
from service.retrieval.retriever import RetrievalRequest
from service.retrieval.sequential import load_sequential, read_model
from service.training.cli import train_app
from service.training.sequential import (
    SASRecConfig,
    SASRecMethod,
    SequentialModelError,
    _build_model,
    fit_sasrec,
    leave_one_out,
    model_dir,
    rank_metrics,
    sequences_from_log,
    train_sequential,
)
from tests.foundation import DEMO, make_recsmith

N_ITEMS = 40
FAST = SASRecConfig(
    max_len=10,
    dim=32,
    layers=2,
    max_epochs=40,
    patience=40,
    lr=5e-3,
    batch_size=64,
    max_minutes=1.0,
    dropout=0.1,
    threads=1,
)


def synthetic_log(users: int = 120, length: int = 12, seed: int = 0) -> list[tuple]:
    """Every user walks a cycle of items (i -> i+1 mod N) from a random start: the next
    item is fully determined by the last one, which only an order-aware model can see."""
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for u in range(users):
        start = rng.randrange(N_ITEMS)
        for t in range(length):
            rows.append(
                (f"u{u:03d}", f"it-{(start + t) % N_ITEMS:02d}", "view", t0 + timedelta(minutes=t))
            )
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict, list[tuple]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("seq"))
    rows = synthetic_log()
    metrics = train_sequential(rows, settings, config=FAST)
    return settings, metrics, rows


def test_training_beats_the_untrained_model(trained: tuple[Settings, dict, list[tuple]]) -> None:
    settings, metrics, rows = trained
    item_ids, _, seqs = sequences_from_log(rows)
    data = leave_one_out(seqs)
    untrained = rank_metrics(
        _build_model(len(item_ids), FAST), data.val_inputs, data.val_targets, FAST.max_len
    )
    assert untrained["ndcg@10"] < 0.4  # ~ chance: 10 of 40 items
    assert metrics["val"]["ndcg@10"] > untrained["ndcg@10"] + 0.4
    assert metrics["test"]["recall@10"] > 0.9
    assert metrics["users_evaluated"] == 120 and metrics["best_epoch"] >= 1


def test_saved_model_reloads_with_the_same_scores(
    trained: tuple[Settings, dict, list[tuple]],
) -> None:
    settings, metrics, rows = trained
    d = model_dir(settings)
    for name in ("model.safetensors", "config.json", "items.json", "metrics.json", "manifest.json"):
        assert (d / name).exists()
    scorer = load_sequential(settings, strict=True)
    assert scorer is not None
    assert len(scorer.info["manifest"]["data_version"]) == 64
    item_ids, _, seqs = sequences_from_log(rows)
    data = leave_one_out(seqs)
    again = rank_metrics(scorer.model, data.test_inputs, data.test_targets, FAST.max_len)
    assert again == pytest.approx(metrics["test"], abs=1e-9)
    # The pattern itself: after it-05, it-06 comes next.
    top = scorer.top_k(["it-03", "it-04", "it-05"], 3, lambda p: True)
    assert top[0][0] == "it-06"
    assert read_model(d).top_k(["it-03", "it-04", "it-05"], 3, lambda p: True) == top


def test_scorer_skips_unknown_items_and_cold_users(
    trained: tuple[Settings, dict, list[tuple]],
) -> None:
    scorer = load_sequential(trained[0], strict=True)
    assert scorer is not None
    assert scorer.top_k(["nope", "also-unknown"], 5, lambda p: True) == []
    assert scorer.top_k([], 5, lambda p: True) == []
    with_unknown = scorer.top_k(["it-04", "nope", "it-05"], 5, lambda p: True)
    assert with_unknown == scorer.top_k(["it-04", "it-05"], 5, lambda p: True)
    # Seen items are not proposed again; filters are respected.
    got = scorer.top_k(["it-05"], 10, lambda p: p != "it-06")
    assert "it-05" not in {p for p, _ in got} and "it-06" not in {p for p, _ in got}
    assert len(got) == 10


def test_missing_and_corrupted_models(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path)
    assert load_sequential(settings) is None
    with pytest.raises(SequentialModelError, match="recsmith train retriever"):
        load_sequential(settings, strict=True)

    train_sequential(
        synthetic_log(users=20, length=5),
        settings,
        config=SASRecConfig(**{**FAST.__dict__, "max_epochs": 1}),
    )
    weights = model_dir(settings) / "model.safetensors"
    weights.write_bytes(b"not a checkpoint" + weights.read_bytes()[16:])
    with pytest.raises(SequentialModelError, match="unusable.*checksum"):
        load_sequential(settings, strict=True)
    with caplog.at_level(logging.WARNING):
        assert load_sequential(settings) is None
    assert "sequential retrieval disabled" in caplog.text

    (model_dir(settings) / "manifest.json").write_text("{ truncated")
    with pytest.raises(SequentialModelError, match="unusable"):
        load_sequential(settings, strict=True)


def test_service_uses_the_model_and_falls_back_when_broken(tmp_path: Path) -> None:
    rs = make_recsmith(tmp_path)
    rows = rs.store.all_interactions()
    users = sorted({r[0] for r in rows})
    # Trained on the demo log through the CLI (the store's log is the default source).

    res = CliRunner().invoke(
        train_app,
        [
            "retriever",
            "--data-dir",
            str(tmp_path),
            "--max-minutes",
            "0.3",
            "--epochs",
            "3",
            "--threads",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (model_dir(rs.settings) / "manifest.json").exists()

    rs.__dict__.pop("retriever", None)  # as a restarted service: the model loads on start
    assert rs.retriever.sequential is not None
    cands = rs.candidates(RetrievalRequest(user_id=users[0], k=10))
    assert any("sequential" in c.sources for c in cands)

    (model_dir(rs.settings) / "model.safetensors").write_bytes(b"\0" * 64)
    rs.__dict__.pop("retriever", None)
    assert rs.retriever.sequential is None
    cands = rs.candidates(RetrievalRequest(user_id=users[0], k=10))
    assert len(cands) == 10 and not any("sequential" in c.sources for c in cands)

    res = CliRunner().invoke(train_app, ["retriever", "--data-dir", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no interactions" in res.output


def test_model_of_another_catalogue_is_not_served(
    trained: tuple[Settings, dict, list[tuple]], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    store = CatalogStore(settings.db_url)
    ingest_file(store, DEMO / "products.jsonl", "products")  # none of it-00..it-39
    shutil.copytree(model_dir(trained[0]), model_dir(settings))
    assert load_sequential(settings, store) is None
    with pytest.raises(SequentialModelError, match="another data set"):
        load_sequential(settings, store, strict=True)


def test_bce_loss_also_learns() -> None:
    _items, _, seqs = sequences_from_log(synthetic_log(users=100))

    data = leave_one_out(seqs)
    cfg = SASRecConfig(**{**FAST.__dict__, "loss": "bce", "max_epochs": 25})
    fit = fit_sasrec(N_ITEMS, data, cfg)
    assert fit.best_val["ndcg@10"] > 0.5
    assert np.isfinite(fit.history[-1]["loss"])


def test_harness_functions_give_the_harness_result_shape() -> None:
    rows = synthetic_log(users=100, length=10)
    ds = Dataset(
        "cycle",
        [Product(id=f"it-{i:02d}", title=f"Item {i}") for i in range(N_ITEMS)],
        [Interaction(user_id=u, product_id=p, event=e, ts=t) for u, p, e, t in rows],
    )
    split = leave_last_two_out(ds)
    users = sample_rows(len(split.users), 40, seed=0)
    method = SASRecMethod(SASRecConfig(**{**FAST.__dict__, "max_epochs": 12}))
    res = evaluate_sequential(split, users, method=method)
    assert isinstance(res, MethodResult) and res.kind == "learned" and res.users == 40
    assert set(res.test) >= {"recall@10", "ndcg@10", "recall@20", "mrr"}
    assert res.test["recall@10"] > 0.9 and res.val["recall@10"] > 0.9
    again = evaluate_sequential(split, users, method=method)  # fitted: reused, not retrained
    assert again.test == res.test and again.params["fit_s"] is None

    cases = sasrec_cases(method, ds, split, users[:5], shortlist=20, history=4)
    assert len(cases) == 5
    for c in cases:
        assert len(c.candidates) == 20 and len(c.history) == 4
        assert set(c.products) >= {x.product_id for x in c.candidates}
        assert c.tail_rank >= 1
