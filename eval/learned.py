"""The learned methods in the offline ranking harness (eval/ranking.py), same protocol and
result shape (eval.ranking.MethodResult) as the baselines:

- `evaluate_sequential`: SASRec fitted on every user's test history (its last item, the
  validation target, drives early stopping), full ranking of the test target.
- `sasrec_cases` + `evaluate_tuned_reranker`: LlamaRec's pipeline, SASRec's top-20 reranked
  by the verbalizer with the LoRA adapter; `evaluate_reranker` from eval.ranking does the
  ranking, so the base verbalizer can be scored on the very same cases for comparison.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.ranking import (
    RERANK_HISTORY,
    SHORTLIST,
    MethodResult,
    RerankCase,
    evaluate_reranker,
    rank_targets,
    sample_rows,
    seen_mask,
)
from service.config import get_settings
from service.llm.factory import get_llm
from service.offline.metrics import summarize
from service.ranking.adapter import adapter_dir, load_adapter_into
from service.ranking.verbalizer import VerbalizerReranker
from service.retrieval.retriever import Candidate
from service.retrieval.sequential import read_model
from service.training.sequential import (
    EpochReport,
    SASRecConfig,
    SASRecMethod,
    SequentialModelError,
    model_dir,
    rank_metrics,
)

if TYPE_CHECKING:
    from eval.ranking import MethodResult, Reporter, RerankCase
    from service.config import Settings
    from service.offline.datasets import Dataset
    from service.offline.split import Split


def evaluate_sequential(
    split: Split,
    rows: np.ndarray,
    config: SASRecConfig | None = None,
    reporter: Reporter | None = None,
    method: SASRecMethod | None = None,
) -> MethodResult:
    """SASRec beside the baselines. Pass a fitted `method` to reuse it (e.g. after
    `sasrec_cases`); else one is trained here (bounded by config.max_minutes)."""
    cfg = config or (method.config if method else SASRecConfig())
    if method is None:
        method = SASRecMethod(cfg, _epoch_hook(reporter))
    fit = method.fit_result is None
    if reporter:
        reporter.stage(f"train {method.name}", cfg.max_epochs if fit else None)
    t0, c0 = time.perf_counter(), time.process_time()
    test, score_s = rank_targets(method, split, "test", rows, fit=fit)
    fit_s, cpu_s = time.perf_counter() - t0 - score_s, time.process_time() - c0
    fr = method.fit_result
    assert fr is not None
    # Validation target, same model: input s[:-2], target s[-2] (training pairs end at s[-3]).
    val_hist = split.history("val")
    val = rank_metrics(fr.model, [val_hist[r] for r in rows], split.targets("val")[rows],
                       cfg.max_len)  # fmt: skip
    return _result(
        name=method.name,
        users=len(rows),
        test=summarize(test.stable),
        val=val,
        shortlist_recall=float(np.mean(test.stable <= SHORTLIST)),
        latency_ms=1000 * score_s / max(len(rows), 1),
        latency_kind="batch scoring, amortised per user (fit excluded)",
        expected_random_ties=test.expected(),
        params={
            "fit_s": round(fit_s, 1) if fit else None,
            "fit_cpu_s": round(cpu_s, 1) if fit else None,
            "best_epoch": fr.best_epoch,
            "epochs_run": fr.epochs_run,
            "stopped": fr.stopped,
            "threads": fr.threads,
            "config": asdict(cfg),
        },
        note="trained on every user's history before the test target; early stopping on "
        "the validation target",
    )


def sasrec_cases(
    method: SASRecMethod,
    ds: Dataset,
    split: Split,
    rows: Sequence[int],
    shortlist: int = 20,
    history: int | None = None,
) -> list[RerankCase]:
    """eval.ranking.RerankCase per row from a fitted SASRecMethod's top-`shortlist` over the
    test history (unseen items only), as LlamaRec hands its retriever's list to the LLM."""
    history = RERANK_HISTORY if history is None else history
    products = {p.id: p for p in ds.products}
    hist = split.history("test")
    targets = split.targets("test")
    rows = [int(r) for r in rows]
    t0 = time.perf_counter()
    scores = method.score(np.asarray(rows))
    per_user_s = (time.perf_counter() - t0) / max(len(rows), 1)
    seen = seen_mask([hist[r] for r in rows], split.n_items)
    scores = np.where(seen, -np.inf, scores)
    cases = []
    for n, r in enumerate(rows):
        order = np.argsort(-scores[n], kind="stable")
        top = order[:shortlist]
        tgt = int(targets[r])
        tail_rank = float(np.flatnonzero(order == tgt)[0] + 1)
        cands = [
            Candidate(split.item_ids[i], float(scores[n, i]), {"sequential": float(scores[n, i])})
            for i in top
        ]
        shown = [split.item_ids[i] for i in hist[r][-history:]]
        needed = shown + [c.product_id for c in cands]
        cases.append(
            RerankCase(
                user_id=split.users[r],
                target=split.item_ids[tgt],
                candidates=cands,
                history=[products[p] for p in shown],
                products={p: products[p] for p in needed},
                tail_rank=tail_rank,
                retrieval_s=per_user_s,
            )
        )
    return cases


def evaluate_tuned_reranker(
    cases: Sequence[RerankCase],
    settings: Settings | None = None,
    adapter: str | Path | None = None,
    reporter: Reporter | None = None,
    **verbalizer_opts: Any,
) -> MethodResult:
    """The verbalizer with the LoRA adapter over the given cases. Raises AdapterError when
    the adapter is missing or unusable (an evaluation must not silently fall back)."""
    s = settings or get_settings()
    llm = load_adapter_into(get_llm(s), Path(adapter) if adapter else adapter_dir(s))
    reranker = VerbalizerReranker(llm, **verbalizer_opts)
    reranker.name = "verbalizer+lora"
    res = evaluate_reranker(reranker, cases, reporter=reporter)
    res.name = f"{_source_label(cases)} top-{len(cases[0].candidates) if cases else 20} → "
    res.name += reranker.name
    res.params["model_id"] = llm.model_id
    return res


def _source_label(cases: Sequence[RerankCase]) -> str:
    first = cases[0].candidates[0].sources if cases and cases[0].candidates else {}
    return "SASRec" if "sequential" in first and len(first) == 1 else "recsmith hybrid"


def _epoch_hook(reporter: Reporter | None) -> Any:
    if reporter is None:
        return None

    def hook(r: EpochReport) -> None:
        reporter.advance()
        reporter.note(f"epoch {r.epoch}: loss {r.loss:.4f}, val NDCG@10 {r.val['ndcg@10']:.4f}")

    return hook


def _result(**kw: Any) -> MethodResult:
    return MethodResult(kind="learned", **kw)


def run_learned(
    ds: Dataset,
    split: Split,
    settings: Settings,
    rerank_users: int = 40,
    seed: int = 0,
    reporter: Reporter | None = None,
    tuned: bool = True,
) -> dict[str, Any]:
    """The saved SASRec (all users, no retraining) and, on a seeded sample, SASRec's top-20
    as is, reranked by the base verbalizer, and by the LoRA-tuned one."""
    scorer = read_model(model_dir(settings))
    trained = scorer.info["metrics"].get("tie_break")
    if trained != split.tie_break:
        raise SequentialModelError(
            f"the saved SASRec was trained with time ties by {trained!r}, this split orders "
            f"them by {split.tie_break!r}: retrain with --tie-break {split.tie_break}"
        )
    method = SASRecMethod.from_scorer(scorer, split.item_ids, split.history("test"))
    rows = np.arange(len(split.users))
    results = [evaluate_sequential(split, rows, reporter=reporter, method=method)]
    sample = sample_rows(len(rows), rerank_users, seed + 1)
    cases = sasrec_cases(method, ds, split, sample)
    results.append(_shortlist_order(cases))
    base = VerbalizerReranker(get_llm(settings))
    res = evaluate_reranker(base, cases, reporter=reporter)
    res.name = f"SASRec top-20 → verbalizer ({get_llm(settings).model_id}, untuned)"
    results.append(res)
    lora_metrics = None
    if tuned:
        results.append(evaluate_tuned_reranker(cases, settings, reporter=reporter))
        lora_metrics = _read_json(adapter_dir(settings) / "metrics.json")
    return {
        "dataset": ds.name,
        "stats": ds.stats(),
        "tie_break": split.tie_break,
        "rerank_users": len(sample),
        "seed": seed,
        "results": [asdict(r) for r in results],
        "sasrec_training": {k: v for k, v in scorer.info["metrics"].items() if k != "history"},
        "sasrec_epochs": scorer.info["metrics"].get("history", []),
        "lora_training": lora_metrics,
    }


def _shortlist_order(cases: Sequence[RerankCase]) -> MethodResult:
    ranks = []
    for c in cases:
        ids = [x.product_id for x in c.candidates]
        ranks.append(float(ids.index(c.target) + 1) if c.target in ids else c.tail_rank)
    r = np.array(ranks)
    return _result(
        name=f"SASRec top-20 as ranked, rerank sample ({len(cases)} users)",
        users=len(cases),
        test=summarize(r),
        shortlist_recall=float(np.mean(r <= 20)),
        note="same users as the rerank rows",
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
