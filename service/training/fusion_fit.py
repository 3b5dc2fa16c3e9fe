"""Fit the retriever's source fusion on the validation target (never the test target).

Input: for each user, every source's ranked list as the service's `Retriever.source_lists`
returns it for the user's validation history (everything before the validation item),
and the validation item. The fused score is the linear form `service.retrieval.fusion`
applies: per source, a weight on 1/(rrf_k + rank + 1) and a weight on score / top score.
Weights are found by coordinate ascent over a fixed grid, maximising validation NDCG@10
plus a tenth of Recall@20 (so among equal rankings the one with the fuller shortlist wins);
rrf_k is chosen from a few values. A two-fold cross-fit over users (fit on one half, score
the other) says how much of the gain is fitted noise.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.offline.datasets import Dataset
from service.offline.pipeline import (
    PIPELINE_K,
    Encoder,
    Reporter,
    application_over,
    source_lists,
)
from service.offline.split import Split
from service.retrieval.fusion import DEFAULT_RRF_K, Fusion

RANK_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SCORE_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # in units of 1 / (rrf_k + 1)
RRF_KS = (10.0, 30.0, 60.0)
SWEEPS = 3
RECALL_WEIGHT = 0.1

Lists = Mapping[str, Sequence[tuple[str, float]]]


@dataclass
class FusionData:
    """One row per (user, candidate in any source's list)."""

    sources: list[str]
    user_of: np.ndarray  # row -> user index
    rr: np.ndarray  # rows x sources: 1 / (rrf_k + rank + 1), 0 when absent
    ns: np.ndarray  # rows x sources: score / |top score of the source|, 0 when absent
    key: np.ndarray  # tie-break: position of the product id in the user's sorted pool
    label: np.ndarray  # bool: the row is the user's target
    n_users: int


def build_data(
    lists: Sequence[Lists], targets: Sequence[str], sources: Sequence[str], rrf_k: float
) -> FusionData:
    user_of, rr_rows, ns_rows, keys, labels = [], [], [], [], []
    s_index = {s: j for j, s in enumerate(sources)}
    for u, (ranked, target) in enumerate(zip(lists, targets, strict=True)):
        pool: dict[str, tuple[list[float], list[float]]] = {}
        for src, items in ranked.items():
            j = s_index.get(src)
            if j is None:
                continue
            top = max((abs(s) for _, s in items), default=0.0)
            for rank, (pid, score) in enumerate(items):
                rr, ns = pool.setdefault(pid, ([0.0] * len(sources), [0.0] * len(sources)))
                rr[j] = 1.0 / (rrf_k + rank + 1)
                ns[j] = float(score) / top if top > 0 else 0.0
        for pos, pid in enumerate(sorted(pool)):  # fuse() breaks ties by product id
            user_of.append(u)
            rr_rows.append(pool[pid][0])
            ns_rows.append(pool[pid][1])
            keys.append(pos)
            labels.append(pid == target)
    n_src = len(sources)
    return FusionData(
        list(sources),
        np.asarray(user_of, dtype=np.int64),
        np.asarray(rr_rows, dtype=np.float64).reshape(-1, n_src),
        np.asarray(ns_rows, dtype=np.float64).reshape(-1, n_src),
        np.asarray(keys, dtype=np.int64),
        np.asarray(labels, dtype=bool),
        len(lists),
    )


def target_ranks(data: FusionData, rank_w: np.ndarray, score_w: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target in the fused pool (np.inf when not in it)."""
    s = data.rr @ rank_w + data.ns @ score_w
    ranks = np.full(data.n_users, np.inf)
    hit = np.flatnonzero(data.label)
    if len(hit) == 0:
        return ranks
    t_user = data.user_of[hit]
    t_score = np.full(data.n_users, np.nan)
    t_key = np.zeros(data.n_users, dtype=np.int64)
    t_score[t_user] = s[hit]
    t_key[t_user] = data.key[hit]
    ts, tk = t_score[data.user_of], t_key[data.user_of]
    before = (s > ts) | ((s == ts) & (data.key < tk))
    ahead = np.bincount(data.user_of, weights=before.astype(np.float64), minlength=data.n_users)
    ranks[t_user] = ahead[t_user] + 1
    return ranks


def metrics(ranks: np.ndarray) -> dict[str, float]:
    finite = np.isfinite(ranks)
    gain = np.where(finite & (ranks <= 10), 1.0 / np.log2(np.where(finite, ranks, 1) + 1), 0.0)
    return {
        "ndcg@10": float(gain.mean()) if len(ranks) else 0.0,
        "recall@10": float(np.mean(ranks <= 10)) if len(ranks) else 0.0,
        "recall@20": float(np.mean(ranks <= 20)) if len(ranks) else 0.0,
        "mrr": float(np.mean(np.where(finite, 1.0 / np.where(finite, ranks, 1), 0.0)))
        if len(ranks)
        else 0.0,
    }


def objective(m: dict[str, float]) -> float:
    return m["ndcg@10"] + RECALL_WEIGHT * m["recall@20"]


def _subset(data: FusionData, users: np.ndarray) -> FusionData:
    keep = np.isin(data.user_of, users)
    remap = np.full(data.n_users, -1, dtype=np.int64)
    remap[users] = np.arange(len(users))
    return FusionData(
        data.sources,
        remap[data.user_of[keep]],
        data.rr[keep],
        data.ns[keep],
        data.key[keep],
        data.label[keep],
        len(users),
    )


def ascend(
    data: FusionData, rank_w: np.ndarray, score_w: np.ndarray, rrf_k: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Coordinate ascent from (rank_w, score_w) over the grids."""
    rank_w, score_w = rank_w.copy(), score_w.copy()
    best = objective(metrics(target_ranks(data, rank_w, score_w)))
    unit = 1.0 / (rrf_k + 1)
    for _ in range(SWEEPS):
        improved = False
        for vec, grid in ((rank_w, RANK_GRID), (score_w, tuple(g * unit for g in SCORE_GRID))):
            for j in range(len(data.sources)):
                keep = vec[j]
                for g in grid:
                    vec[j] = g
                    if not (rank_w.any() or score_w.any()):
                        continue
                    obj = objective(metrics(target_ranks(data, rank_w, score_w)))
                    if obj > best + 1e-12:
                        best, keep, improved = obj, g, True
                vec[j] = keep
        if not improved:
            break
    return rank_w, score_w, best


@dataclass
class FitResult:
    fusion: Fusion
    baseline: dict[str, float]  # the default RRF weights on the validation target
    fitted: dict[str, float]  # the fitted fusion, in-sample
    cross_fit: dict[str, float]  # two-fold: each half scored with weights fitted on the other


def fit_fusion(
    lists: Sequence[Lists],
    targets: Sequence[str],
    default_weights: Mapping[str, float],
    info: dict[str, Any] | None = None,
    seed: int = 0,
) -> FitResult:
    """lists/targets: per user, the sources' lists for the validation history and the
    validation item. default_weights: the retriever's weight per source (today's RRF)."""
    sources = sorted({s for ranked in lists for s in ranked})
    default_rank = np.array([float(default_weights.get(s, 1.0)) for s in sources])
    zeros = np.zeros(len(sources))

    base_data = build_data(lists, targets, sources, DEFAULT_RRF_K)
    baseline = metrics(target_ranks(base_data, default_rank, zeros))

    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    datas: dict[float, FusionData] = {}
    for rrf_k in RRF_KS:
        data = base_data if rrf_k == DEFAULT_RRF_K else build_data(lists, targets, sources, rrf_k)
        datas[rrf_k] = data
        rw, sw, obj = ascend(data, default_rank, zeros, rrf_k)
        if best is None or obj > best[0] + 1e-12:
            best = (obj, rrf_k, rw, sw)
    assert best is not None
    _obj, rrf_k, rank_w, score_w = best
    data = datas[rrf_k]
    fitted = metrics(target_ranks(data, rank_w, score_w))

    # Two-fold cross-fit at the chosen rrf_k: how much of the gain survives on unseen users.
    rng = np.random.default_rng(seed)
    perm = rng.permutation(data.n_users)
    halves = (np.sort(perm[: data.n_users // 2]), np.sort(perm[data.n_users // 2 :]))
    held = np.full(data.n_users, np.inf)
    for a, b in (halves, halves[::-1]):
        rw, sw, _ = ascend(_subset(data, a), default_rank, zeros, rrf_k)
        held[b] = target_ranks(_subset(data, b), rw, sw)
    cross_fit = metrics(held)

    fusion = Fusion(
        rank_weights={s: float(w) for s, w in zip(sources, rank_w, strict=True)},
        score_weights={s: float(w) for s, w in zip(sources, score_w, strict=True) if w},
        rrf_k=float(rrf_k),
        info={
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "fitted_on": "validation target (each user's second-to-last item)",
            "users": data.n_users,
            "objective": f"NDCG@10 + {RECALL_WEIGHT} x Recall@20 on the fused pool",
            "validation": {
                "default_rrf": _round(baseline),
                "fitted": _round(fitted),
                "two_fold_cross_fit": _round(cross_fit),
            },
            **(info or {}),
        },
    )
    return FitResult(fusion, baseline, fitted, cross_fit)


def data_version(name: str, histories: Sequence[Sequence[int]], tie_break: str) -> str:
    """A short content hash of the histories the fusion was fitted on."""
    h = hashlib.sha256()
    for seq in histories:
        h.update(np.asarray(seq, dtype=np.int64).tobytes())
        h.update(b"|")
    return f"{name}:{tie_break}:sha256:{h.hexdigest()[:16]}"


def _round(m: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in m.items()}


def fit_fusion_on_validation(
    ds: Dataset,
    split: Split,
    rows: np.ndarray,
    encoder: Encoder,
    k: int = PIPELINE_K,
    reporter: Reporter | None = None,
    sequential: Path | None = None,
) -> FitResult:
    """Source lists for each user's validation history (a store that never holds a
    validation or test item), then the fusion fitted on the validation items."""
    reporter = reporter or Reporter()
    with tempfile.TemporaryDirectory(prefix="recsmith-fusion-") as tmp:
        reporter.stage("fusion: ingest + index validation histories")
        rs = application_over(Path(tmp), encoder, ds, split, "val", sequential).engine
        reporter.stage("fusion: source lists on the validation target", len(rows))
        lists, _lat = source_lists(rs, split, rows, "val", k, reporter)
        reporter.stage("fusion: fit")
        val_targets = split.targets("val")
        targets = [split.item_ids[val_targets[r]] for r in rows]
        sources = sorted({s for ranked in lists for s in ranked})
        defaults = {s: rs.retriever.source_weight(s) for s in sources}
        hist = split.history("val")
        info = {
            "dataset": ds.name,
            "data_version": data_version(ds.name, [hist[r] for r in rows], split.tie_break),
            "encoder_id": str(encoder.model_id),
            "retrieval_k": k,
        }
        return fit_fusion(lists, targets, defaults, info)
