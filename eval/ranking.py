"""One offline ranking run: every method side by side on the same LlamaRec split.

Baselines are fitted on every user's history for the target at hand and tuned (EASE's λ)
on the validation target; the report is on the test target. recsmith runs as the service
runs it, over temporary data directories:
1. fusion: a store of validation histories; the service's `Retriever.source_lists` per
   user; the source fusion fitted on the validation items (eval/fusion_fit.py) and saved
   as the artefact the service loads (`<data dir>/artefacts/fusion.json`);
2. a store of test histories (never a test target) whose `Recsmith` loads that artefact;
   each source and the fused hybrid (fitted, and today's default RRF weights) scored on its
   own list (past the list: a miss);
3. the `recsmith pipeline` row: `Application.recommend` — the method
   /v1/recommendations calls — per user, with the configured rerank.

LLM rerankers plug in through `evaluate_reranker`: any `service.ranking.base.Reranker`
reorders the hybrid top-20 of a fixed, seeded sample of users, timed per user.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from eval.baselines import EASE, EASE_LAMBDAS, EASE_MAX_ITEMS, Method, default_methods
from service.catalog.models import Product
from service.config import Settings, get_settings
from service.offline.datasets import Dataset
from service.offline.metrics import KS, TargetRanks, ranks_from_lists, summarize, target_ranks
from service.offline.pipeline import (
    HISTORY_LIMIT,
    PIPELINE_K,
    Encoder,
    Reporter,
    default_encoder,
)
from service.offline.pipeline import application_over as _application_over
from service.offline.pipeline import source_lists as _source_lists
from service.offline.split import Split, Target, TieBreak, leave_last_two_out
from service.ranking.base import UserContext
from service.ranking.factory import get_reranker
from service.retrieval.fusion import Fusion
from service.retrieval.retriever import RRF_K, Candidate
from service.training.fusion_fit import (
    FitResult,
    data_version,
    fit_fusion_on_validation,
)
from service.training.sequential import SASRecConfig, model_dir, train_on_sequences

SHORTLIST = 20
RERANK_HISTORY = 10  # history items shown to a reranker, as service.recommend does
SCORE_BATCH = 256


@dataclass
class MethodResult:
    name: str
    kind: str  # "baseline" | "retrieval" | "rerank"
    users: int
    test: dict[str, float]
    val: dict[str, float] = field(default_factory=dict)
    shortlist_recall: float | None = None  # Recall@20 of the top-20 handed to a reranker
    latency_ms: float = 0.0  # per user
    latency_kind: str = ""  # how latency was measured
    expected_random_ties: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class RankingRun:
    dataset: str
    stats: dict[str, int]
    tie_break: str
    users_evaluated: int
    users_total: int
    seed: int
    results: list[MethodResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    started: str = ""
    sensitivity: list[MethodResult] = field(default_factory=list)  # other time tie-break
    machine: dict[str, Any] = field(default_factory=dict)  # latencies depend on it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def best_baseline(self) -> MethodResult | None:
        base = [r for r in self.results if r.kind == "baseline" and r.users == self.users_evaluated]
        return max(base, key=lambda r: r.test.get("ndcg@10", 0.0), default=None)


# -- baselines --------------------------------------------------------------------------
def seen_mask(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    seen = np.zeros((len(histories), n_items), dtype=bool)
    for r, h in enumerate(histories):
        seen[r, h] = True
    return seen


def rank_targets(
    method: Method, split: Split, target: Target, rows: np.ndarray, fit: bool = True
) -> tuple[TargetRanks, float]:
    """Fit on every user's history for `target`, rank the targets of `rows`. Returns the
    ranks and the scoring time (fit excluded) in seconds."""
    histories = split.history(target)
    if fit:
        method.fit(histories, split.n_items)
    targets = split.targets(target)
    parts: list[TargetRanks] = []
    t0 = time.perf_counter()
    for start in range(0, len(rows), SCORE_BATCH):
        chunk = rows[start : start + SCORE_BATCH]
        scores = method.score(chunk)
        seen = seen_mask([histories[r] for r in chunk], split.n_items)
        parts.append(target_ranks(scores, targets[chunk], seen))
    elapsed = time.perf_counter() - t0
    return TargetRanks(
        np.concatenate([p.greater for p in parts]),
        np.concatenate([p.equal for p in parts]),
        np.concatenate([p.stable for p in parts]),
    ), elapsed


def evaluate_baseline(
    method: Method, split: Split, rows: np.ndarray, lambdas: Sequence[float] = EASE_LAMBDAS
) -> MethodResult:
    params: dict[str, Any] = {}
    if isinstance(method, EASE):
        # λ by validation NDCG@10 on the evaluated users, then refit on the test histories.
        tuned: dict[float, TargetRanks] = {}
        for lam in lambdas:
            method.lam = float(lam)
            tuned[method.lam], _ = rank_targets(method, split, "val", rows)
        by_lam = {lam: summarize(r.stable)["ndcg@10"] for lam, r in tuned.items()}
        method.lam = max(by_lam, key=lambda k: by_lam[k])
        val = tuned[method.lam]
        params = {
            "lambda": method.lam,
            "val_ndcg@10_by_lambda": {f"{k:g}": v for k, v in by_lam.items()},
        }
    else:
        val, _ = rank_targets(method, split, "val", rows)
    t0 = time.perf_counter()
    test, score_s = rank_targets(method, split, "test", rows)
    fit_s = time.perf_counter() - t0 - score_s
    params["fit_s"] = round(fit_s, 3)
    return MethodResult(
        name=method.name + (f", λ={method.lam:g}" if isinstance(method, EASE) else ""),
        kind="baseline",
        users=len(rows),
        test=summarize(test.stable),
        val=summarize(val.stable),
        shortlist_recall=float(np.mean(test.stable <= SHORTLIST)),
        latency_ms=1000 * score_s / max(len(rows), 1),
        latency_kind="batch scoring, amortised per user (fit excluded)",
        expected_random_ties=test.expected(),
        params=params,
    )


def embed_products(
    products: Sequence[Product], encoder: Encoder, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    texts = [p.embedding_text() for p in products]
    vecs = np.asarray(encoder.encode(texts, progress), dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.maximum(norms, 1e-12)


def encoder_label(encoder: Encoder) -> str:
    mid = str(getattr(encoder, "model_id", "encoder"))
    return "MiniLM" if "minilm" in mid.lower() else Path(mid).name


# -- recsmith retrieval ----------------------------------------------------------------------
@dataclass
class RerankCase:
    """One sampled user, ready for a reranker: the hybrid shortlist and what the service
    would show the model."""

    user_id: str
    target: str
    candidates: list[Candidate]
    history: list[Product]
    products: dict[str, Product]
    tail_rank: float  # the target's rank when it is not in the shortlist
    retrieval_s: float


@dataclass
class RetrievalEval:
    results: list[MethodResult]
    cases: list[RerankCase]
    setup_s: float
    fusion: FitResult | None = None
    served: dict[str, list[str]] = field(default_factory=dict)  # pipeline: user -> items


def _history_products_for(split: Split, rows: np.ndarray) -> list[list[str]]:
    hist = split.history("test")
    return [[split.item_ids[i] for i in hist[r]] for r in rows]


SOURCE_LABELS = {
    "dense_history": "recsmith retrieval: dense history (profile of the encoder in use)",
    "co_interaction": "recsmith retrieval: co-interaction (window)",
    "item_knn": "recsmith retrieval: item-kNN (last 20, 0.5^age)",
    "next_item": "recsmith retrieval: next-item transitions (last 20, 0.5^age)",
    "sequential": "recsmith retrieval: SASRec (sequential source)",
}
HYBRID_FITTED = "recsmith retrieval: hybrid, fitted fusion"
HYBRID_RRF = "recsmith retrieval: hybrid, default RRF weights (before fitting)"
PIPELINE = "recsmith pipeline"
POOL = 10**9  # fuse() cut-off that keeps every candidate of every source


def _train_sequential(split: Split, root: Path, minutes: float, reporter: Reporter) -> Path:
    """SASRec as `recsmith train retriever` trains it, on the split's sequences: it learns
    from the items before each user's validation target and stops early on that target."""
    reporter.stage(f"SASRec: train (at most {minutes:g} min)")
    settings = Settings(data_dir=root, database_url="")
    n = sum(len(s) for s in split.sequences)
    version = data_version("split", split.sequences, split.tie_break)
    train_on_sequences(
        split.item_ids, split.sequences, settings, version, n,
        config=SASRecConfig(max_minutes=minutes), extra={"source": "eval ranking"},
    )  # fmt: skip
    return model_dir(settings)


def evaluate_recsmith(
    ds: Dataset,
    split: Split,
    rows: np.ndarray,
    encoder: Encoder,
    rerank_rows: set[int],
    reporter: Reporter | None = None,
    shortlist: int = SHORTLIST,
    fit: bool = True,
    pipeline_k: int = PIPELINE_K,
    pipeline_rerank: str = "none",
    data_dir: Path | None = None,
    sequential_minutes: float = 0.0,
) -> RetrievalEval:
    """Each retrieval source and the fused hybrid on their own lists, then the pipeline
    exactly as /v1/recommendations serves it (`Application.recommend`), all over an
    `Application` whose data dir holds the fusion fitted on the validation target.
    data_dir: keep that data dir there (an empty folder) instead of a temporary one, e.g. to
    serve it afterwards. sequential_minutes > 0: train SASRec (service.training.sequential)
    for that long on every user's items before the validation target, early-stopped on the
    validation target, and serve it as the `sequential` source in both stores."""
    reporter = reporter or Reporter()
    t_setup = time.perf_counter()
    fitted: FitResult | None = None
    with contextlib.ExitStack() as stack:
        seq_dir: Path | None = None
        if sequential_minutes > 0:
            seq_dir = _train_sequential(
                split,
                Path(stack.enter_context(tempfile.TemporaryDirectory())),
                sequential_minutes,
                reporter,
            )
        if fit:
            fitted = fit_fusion_on_validation(
                ds, split, rows, encoder, pipeline_k, reporter, seq_dir
            )
        root = data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="recsmith-eval-"))
        )
        if fitted is not None:
            fitted.fusion.save(Settings(data_dir=root).fusion_file)
        reporter.stage("recsmith: ingest + index test histories")
        app = _application_over(root, encoder, ds, split, "test", seq_dir)
        rs = app.engine
        retriever = rs.retriever  # loads the artefact, as the service does at start-up
        status = rs.fusion_status
        # Today's weighted RRF for the before/after rows, over the same source lists: a
        # fusion holding no weight of its own takes every source's default weight.
        plain = Fusion(rank_weights={}, rrf_k=RRF_K)
        setup_s = time.perf_counter() - t_setup

        targets = split.targets("test")
        target_ids = [split.item_ids[targets[r]] for r in rows]
        reporter.stage("recsmith: retrieval sources", len(rows))
        lists, latency = _source_lists(rs, split, rows, "test", pipeline_k, reporter)
        ranked: dict[str, list[list[str]]] = {k: [] for k in SOURCE_LABELS}
        ranked[HYBRID_FITTED], ranked[HYBRID_RRF] = [], []
        cases: list[RerankCase] = []
        hist = split.history("test")
        for n, (r, src_lists) in enumerate(zip(rows, lists, strict=True)):
            for src in SOURCE_LABELS:
                ranked[src].append([p for p, _ in src_lists.get(src, [])])
            pool = retriever.fuse(src_lists, POOL)
            ranked[HYBRID_FITTED].append([c.product_id for c in pool])
            rrf = plain.scores(src_lists, retriever.source_weight)
            ranked[HYBRID_RRF].append(sorted(rrf, key=lambda p: (-rrf[p], p)))
            if int(r) in rerank_rows:
                ids = [split.item_ids[i] for i in hist[r]]
                shown = ids[-RERANK_HISTORY:]
                cands = pool[:shortlist]
                prods = rs.store.get_products(shown + [c.product_id for c in cands])
                full = ranked[HYBRID_FITTED][-1]
                tgt = target_ids[n]
                cases.append(
                    RerankCase(
                        user_id=split.users[r],
                        target=tgt,
                        candidates=cands,
                        history=[prods[p] for p in shown if p in prods],
                        products=prods,
                        tail_rank=float(full.index(tgt) + 1) if tgt in full else np.inf,
                        retrieval_s=latency[n],
                    )
                )

        # The pipeline as served: the same function /v1/recommendations calls, per user.
        reporter.stage(f"recsmith pipeline: recommend(k={pipeline_k})", len(rows))
        served: list[list[str]] = []
        served_s: list[float] = []
        degraded: list[str] = []
        for r in rows:
            t0 = time.perf_counter()
            rec = app.recommend(user_id=split.users[r], k=pipeline_k, rerank=pipeline_rerank)
            served_s.append(time.perf_counter() - t0)
            served.append([i.product_id for i in rec.items])
            if rec.degraded:
                degraded.append(rec.degraded_reason or "unknown")
            reporter.advance()

    lat_ms = 1000 * float(np.mean(latency)) if latency else 0.0
    results: list[MethodResult] = []
    params = {"shortlist": shortlist, "history_limit": HISTORY_LIMIT, "list_depth": pipeline_k}
    present = {src for src_lists in lists for src in src_lists}
    for key in (*(s for s in SOURCE_LABELS if s in present), HYBRID_FITTED, HYBRID_RRF):
        ranks = ranks_from_lists(ranked[key], target_ids)
        results.append(
            MethodResult(
                name=SOURCE_LABELS.get(key, key),
                kind="retrieval",
                users=len(rows),
                test=summarize(ranks),
                shortlist_recall=float(np.mean(ranks <= shortlist)),
                latency_ms=lat_ms,
                latency_kind="one Retriever.source_lists call per user (all sources at once)",
                params=params,
                note="ranked within the source's list (hybrid: the fused pool of all lists); "
                "past it a miss",
            )
        )
        if key == HYBRID_FITTED and fitted is not None:
            results[-1].params = {
                **params,
                "fusion": fitted.fusion.to_dict(),
                "validation": {
                    "default_rrf": fitted.baseline,
                    "fitted": fitted.fitted,
                    "two_fold_cross_fit": fitted.cross_fit,
                },
            }
    ranks = ranks_from_lists(served, target_ids)
    same = sum(a[:pipeline_k] == b for a, b in zip(ranked[HYBRID_FITTED], served, strict=True))
    note = (
        f"Application.recommend(k={pipeline_k}, rerank={pipeline_rerank}) per user on an "
        f"Application over the eval's data dir (fusion: {status.state if status else 'n/a'}); "
        f"items past the {pipeline_k} returned count as misses (MRR is a lower bound). "
        f"{same} of {len(rows)} lists equal the fitted hybrid's top {pipeline_k}; "
        f"{len(degraded)} degraded"
    )
    if degraded:
        note += f" (first reason: {degraded[0][:160]})"
    results.append(
        MethodResult(
            name=PIPELINE,
            kind="retrieval" if pipeline_rerank == "none" else "rerank",
            users=len(rows),
            test=summarize(ranks),
            shortlist_recall=float(np.mean(ranks <= shortlist)),
            latency_ms=1000 * float(np.mean(served_s)) if served_s else 0.0,
            latency_kind="one recommend() call per user (store reads, retrieval, rerank)",
            params={
                "k": pipeline_k,
                "rerank": pipeline_rerank,
                "fusion_status": status.state if status else None,
                "fusion_reason": status.reason if status else None,
                "same_as_fitted_hybrid": same,
                "degraded": len(degraded),
            },
            note=note,
        )
    )
    by_user = {split.users[r]: items for r, items in zip(rows, served, strict=True)}
    return RetrievalEval(results, cases, setup_s, fitted, by_user)


# -- LLM rerankers ------------------------------------------------------------------------
def evaluate_reranker(
    reranker: Any,
    cases: Sequence[RerankCase],
    name: str | None = None,
    reporter: Reporter | None = None,
    warmup: bool = True,
) -> MethodResult:
    """'retrieval top-20 → rerank' for each case: any object with
    `rank(UserContext, candidates, products) -> RankResult`. A target outside the shortlist
    keeps its retrieval rank (the reranker only permutes the shortlist)."""
    reporter = reporter or Reporter()
    label = name or getattr(reranker, "name", type(reranker).__name__)
    if warmup and cases:
        # One untimed call first: model loading is a one-off cost, not a per-user latency.
        reporter.stage(f"rerank: {label} (warm-up)")
        reranker.rank(
            UserContext(history=cases[0].history), list(cases[0].candidates), cases[0].products
        )
    reporter.stage(f"rerank: {label}", len(cases))
    ranks, rerank_s, total_s = [], [], []
    degraded: list[str] = []
    model_id: str | None = None
    for case in cases:
        ctx = UserContext(history=case.history)
        t0 = time.perf_counter()
        result = reranker.rank(ctx, list(case.candidates), case.products)
        dt = time.perf_counter() - t0
        order = [pid for pid, _ in result.order]
        ranks.append(
            float(order.index(case.target) + 1) if case.target in order else case.tail_rank
        )
        rerank_s.append(dt)
        total_s.append(dt + case.retrieval_s)
        model_id = model_id or getattr(result, "model_id", None)
        if getattr(result, "degraded", False):
            degraded.append(str(getattr(result, "reason", "") or "unknown"))
        reporter.advance()
    in_short = [case.target in {c.product_id for c in case.candidates} for case in cases]
    note = f"{len(degraded)} of {len(cases)} answers degraded to retrieval order"
    if degraded:
        note += f" (first reason: {degraded[0][:160]})"
    return MethodResult(
        name=f"recsmith hybrid top-{len(cases[0].candidates) if cases else SHORTLIST} → {label}",
        kind="rerank",
        users=len(cases),
        test=summarize(np.array(ranks)),
        shortlist_recall=float(np.mean(in_short)) if cases else None,
        latency_ms=1000 * float(np.mean(total_s)) if cases else 0.0,
        latency_kind="retrieval + rerank per user, sequential",
        params={
            "rerank_ms_mean": 1000 * float(np.mean(rerank_s)) if cases else 0.0,
            "rerank_ms_p95": 1000 * float(np.percentile(rerank_s, 95)) if cases else 0.0,
            "degraded": len(degraded),
            "model_id": model_id,
        },
        note=note,
    )


def load_rerankers(
    names: Sequence[str], reporter: Reporter | None = None
) -> tuple[list[Any], list[str]]:
    """The named rerankers over the configured LLM; a note for each one skipped."""
    reporter = reporter or Reporter()
    out, notes = [], []
    if names:
        s = get_settings()
        notes.append(
            f"Rerankers use the configured LLM: backend {s.llm_backend}, model {s.llm_model!r}"
            + (" (SmolLM2-135M-Instruct)" if s.llm_model == "default" else "")
            + (f", dtype {s.llm_dtype}" if s.llm_backend == "transformers" else "")
            + "."
        )
    for name in names:
        try:
            out.append(get_reranker(name))
        except (ImportError, ValueError, TypeError) as e:
            msg = f"reranker {name!r} skipped: {e}"
            reporter.note(msg)
            notes.append(msg)
    return out, notes


# -- the whole run ------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpus": os.cpu_count(), "loadavg_1m_at_start": round(load[0], 2)}


def sample_rows(n_users: int, k: int | None, seed: int) -> np.ndarray:
    """A fixed, seeded sample of user rows (all when k is None or too big), sorted."""
    if k is None or k >= n_users:
        return np.arange(n_users)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_users, size=k, replace=False))


def run_ranking(
    ds: Dataset,
    users: int | None = None,
    seed: int = 0,
    tie_break: TieBreak = "item_id",
    encoder: Encoder | None = None,
    content: bool = True,
    retrieval: bool = True,
    rerankers: Sequence[Any] = (),
    rerank_users: int = 100,
    reporter: Reporter | None = None,
    sensitivity: bool = True,
    ease_lambdas: Sequence[float] = EASE_LAMBDAS,
    fit_fusion: bool = True,
    pipeline_k: int = PIPELINE_K,
    pipeline_rerank: str = "none",
    sequential_minutes: float = 0.0,
) -> RankingRun:
    """rerankers: names for load_rerankers, or Reranker objects."""
    reporter = reporter or Reporter()
    started = datetime.now(UTC)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    split = leave_last_two_out(ds, tie_break)
    rows = sample_rows(len(split.users), users, seed)
    run = RankingRun(
        dataset=ds.name,
        stats=ds.stats(),
        tie_break=tie_break,
        users_evaluated=len(rows),
        users_total=len(split.users),
        seed=seed,
        notes=list(ds.notes),
        started=started.isoformat(timespec="seconds"),
        machine=machine_info(),
    )
    if split.dropped_users:
        run.notes.append(f"{split.dropped_users} users with < 3 distinct items dropped.")
    timings["split"] = time.perf_counter() - t0

    embeddings = None
    if not (content and retrieval):
        off = [
            x
            for x, on in (("the content baseline", content), ("recsmith retrieval", retrieval))
            if not on
        ]
        run.notes.append(f"Not run this time: {' and '.join(off)} (switched off for this run).")
    needs_encoder = content or retrieval
    if needs_encoder and encoder is None:
        reporter.stage("load the encoder")
        encoder = default_encoder()
    if content and encoder is not None:
        reporter.stage("embed products", len(ds.products))
        t0 = time.perf_counter()
        embeddings = embed_products(ds.products, encoder, reporter.advance)
        timings["embed_products"] = time.perf_counter() - t0

    label = encoder_label(encoder) if encoder is not None else ""
    methods = default_methods(split.n_items, embeddings, label)
    if split.n_items > EASE_MAX_ITEMS:
        run.notes.append(f"EASE skipped: {split.n_items:,} items is too many for a dense inverse.")
    reporter.stage("baselines", len(methods))
    t0 = time.perf_counter()
    for m in methods:
        run.results.append(evaluate_baseline(m, split, rows, ease_lambdas))
        reporter.advance()
    timings["baselines"] = time.perf_counter() - t0

    tied = len({(i.user_id, i.ts) for i in ds.interactions}) < len(ds.interactions)
    if sensitivity and not tied:
        run.notes.append("No two interactions of a user share a timestamp: no tie-break to vary.")
    if sensitivity and tied:
        other: TieBreak = "original" if tie_break == "item_id" else "item_id"
        alt = leave_last_two_out(ds, other)
        alt_rows = sample_rows(len(alt.users), users, seed)
        for m in default_methods(alt.n_items, embeddings, label):
            res = evaluate_baseline(m, alt, alt_rows, ease_lambdas)
            res.note = f"time ties ordered by {other}"
            run.sensitivity.append(res)

    if retrieval and encoder is not None:
        specs = list(rerankers)
        rerank_rows = (
            set(sample_rows(len(rows), rerank_users, seed + 1).tolist()) if specs else set()
        )
        rerank_users_rows = {int(rows[i]) for i in rerank_rows}
        t0 = time.perf_counter()
        rev = evaluate_recsmith(
            ds,
            split,
            rows,
            encoder,
            rerank_users_rows,
            reporter,
            fit=fit_fusion,
            pipeline_k=pipeline_k,
            pipeline_rerank=pipeline_rerank,
            sequential_minutes=sequential_minutes,
        )
        timings["recsmith_setup_incl_fusion_fit"] = rev.setup_s
        timings["recsmith"] = time.perf_counter() - t0
        run.results.extend(rev.results)
        if rev.fusion is not None:
            f = rev.fusion
            run.notes.append(
                "Fusion fitted on the validation target (each user's second-to-last item; "
                "source lists from a store of validation histories only), saved to the eval "
                "data dir's artefacts/fusion.json and loaded by the Recsmith there: "
                f"rank weights {_fmt(f.fusion.rank_weights)}, score weights "
                f"{_fmt(f.fusion.score_weights) or 'none'}, rrf_k {f.fusion.rrf_k:g}. "
                f"Validation NDCG@10 {f.baseline['ndcg@10']:.3f} (default RRF weights) → "
                f"{f.fitted['ndcg@10']:.3f} fitted, {f.cross_fit['ndcg@10']:.3f} two-fold "
                f"cross-fit; Recall@20 {f.baseline['recall@20']:.3f} → "
                f"{f.fitted['recall@20']:.3f} ({f.cross_fit['recall@20']:.3f} cross-fit)."
            )
        else:
            run.notes.append("Fusion not fitted this run: the service's default weights.")
        if specs:
            objs, notes = load_rerankers([s for s in specs if isinstance(s, str)], reporter)
            run.notes.extend(notes)
            objs += [s for s in specs if not isinstance(s, str)]
            if objs and rev.cases:
                run.results.append(_same_sample_retrieval(rev.cases))
                for obj in objs:
                    t0 = time.perf_counter()
                    run.results.append(evaluate_reranker(obj, rev.cases, reporter=reporter))
                    timings[f"rerank_{getattr(obj, 'name', 'x')}"] = time.perf_counter() - t0
    run.timings_s = {k: round(v, 2) for k, v in timings.items()}
    return run


def _fmt(weights: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(weights.items()))


def _same_sample_retrieval(cases: Sequence[RerankCase]) -> MethodResult:
    """The hybrid shortlist order on the rerank sample: what a reranker has to beat."""
    ranks = []
    for c in cases:
        ids = [x.product_id for x in c.candidates]
        ranks.append(float(ids.index(c.target) + 1) if c.target in ids else c.tail_rank)
    return MethodResult(
        name=f"recsmith hybrid, rerank sample ({len(cases)} users)",
        kind="retrieval",
        users=len(cases),
        test=summarize(np.array(ranks)),
        shortlist_recall=float(
            np.mean([r <= len(c.candidates) for r, c in zip(ranks, cases, strict=True)])
        ),
        latency_ms=1000 * float(np.mean([c.retrieval_s for c in cases])),
        latency_kind="one Retriever.candidates call per user",
        note="same users as the rerank rows",
    )


__all__ = [
    "KS",
    "MethodResult",
    "RankingRun",
    "RerankCase",
    "Reporter",
    "evaluate_baseline",
    "evaluate_recsmith",
    "evaluate_reranker",
    "load_rerankers",
    "rank_targets",
    "run_ranking",
    "sample_rows",
]
