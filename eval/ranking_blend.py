"""The LLM stage made safe by construction (issue 11): the verbalizer's scores blended with
its shortlist's, the weight fitted on the validation target, reported on the test target.

For each user the served shortlist (`service.recommend.shortlist`, top 20, over a store of
the histories for that target with the fitted fusion loaded) is scored once by the
verbalizer (no blend); the blend is then pure arithmetic over the saved scores, so every
weight of the grid is evaluated on the same LLM calls. A user whose target is outside the
shortlist scores 0 in NDCG@10 whatever the order, so only users with the target inside
need the model: a run that covers all of them is exact over all users.

    python -m eval.ranking_blend --dataset ml-100k --shortlists S.json --resume R \
        --minutes 10 --out eval/results

Where the seconds go on 2 shared cores (eval/results/2026-11-30-ranking-llm-all.md): the
943 shortlists per target are minutes; prompt building is negligible; the model's prefill
of a ~650-token prompt is everything else (tiny profile: ~3 CPU-s on transformers fp32,
~6 on the llama.cpp Q4_1 GGUF with one thread, ~19 with two threads on a loaded machine).
So the shortlists are saved once (--shortlists), only hit users meet the model, several
users share one batched call (--batch), and scores are appended as they come (--resume):
repeated bounded runs add up to every hit user.

writes the fitted blend to `<data dir>/artefacts/rerank_blend.json` (with --data-dir) and a
JSON of the per-weight validation and test NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.llm.factory import get_llm
from service.offline.datasets import load
from service.offline.pipeline import application_over, default_encoder
from service.offline.split import leave_last_two_out
from service.ranking.adapter import load_adapter_into
from service.ranking.base import UserContext
from service.ranking.blend import BLEND_FILE, WEIGHT_GRID, RerankBlend
from service.ranking.verbalizer import VerbalizerReranker
from service.recommend import shortlist
from service.retrieval.fusion import Fusion, load_fusion
from service.retrieval.retriever import Candidate
from service.training.fusion_fit import fit_fusion_on_validation

SHORTLIST = 20


@dataclass
class BlendCase:
    """One user whose target is in the shortlist: the shortlist's scores (served order),
    the LLM's score for each shortlist position, and the target's position."""

    user_id: str
    retrieval: list[float]
    llm: list[float]
    target: int
    degraded: bool = False


def ndcg10(cases: Sequence[BlendCase], n_users: int, weight: float) -> float:
    """NDCG@10 over `n_users` (users without a case score 0: target outside the shortlist)."""
    blend = RerankBlend(weight)
    total = 0.0
    for c in cases:
        rank = blend.order(c.retrieval, c.llm).index(c.target) + 1
        if rank <= 10:
            total += 1.0 / math.log2(rank + 1)
    return total / max(n_users, 1)


def fit_blend(
    cases: Sequence[BlendCase], n_users: int, grid: Sequence[float] = WEIGHT_GRID
) -> tuple[RerankBlend, dict[str, float]]:
    """The grid weight with the best NDCG@10 on `cases` (the validation target); ties go to
    the smaller weight, and 0 (the shortlist itself) is always a candidate, so the fitted
    blend never scores below the shortlist on the data it was fitted on."""
    grid = sorted({0.0, *(float(g) for g in grid)})
    by_w = {w: ndcg10(cases, n_users, w) for w in grid}
    best = max(grid, key=lambda w: (by_w[w] - 1e-12 * w, -w))
    return RerankBlend(best), {f"{w:g}": v for w, v in by_w.items()}


@dataclass
class HitUser:
    """A user whose target is in the served shortlist: what the LLM needs, by id, so the
    shortlists can be saved once and scored again by another model or adapter."""

    user_id: str
    history: list[str]  # the prompt's history (the served context's, oldest first)
    candidates: list[str]  # served order
    retrieval: list[float]
    target: int


def collect_shortlists(
    app: Any, users: Sequence[str], targets: Sequence[str], size: int = SHORTLIST
) -> dict[str, Any]:
    """The served shortlist of every user; keeps those whose target is inside."""
    rs = app.engine
    hits: list[HitUser] = []
    t0 = time.perf_counter()
    for user, target in zip(users, targets, strict=True):
        sl = shortlist(rs, user_id=user, k=size, size=size)
        ids = [c.product_id for c in sl.candidates]
        if target in ids:
            hist = [p.id for p in sl.context.history]
            scores = [float(c.score) for c in sl.candidates]
            hits.append(HitUser(user, hist, ids, scores, ids.index(target)))
    return {"users": len(users), "hits": hits, "shortlist_s": round(time.perf_counter() - t0, 1)}


def score_hits(
    hits: Sequence[HitUser],
    products: dict[str, Any],
    reranker: VerbalizerReranker,
    budget_s: float | None = None,
    batch: int = 8,
    order_seed: int = 0,
    resume: Path | None = None,
) -> dict[str, Any]:
    """The verbalizer's scores for the hit users, `batch` users per model call
    (`VerbalizerReranker.score_many`), in a seeded random order, at most `budget_s`
    seconds when given. A batch the model fails on is scored one by one through `rank`
    (the served path's fallback: the shortlist order, counted as degraded). `resume`: a
    JSON-lines file of scored users, appended after every batch and read first, so a run
    cut short by its budget or a timeout continues where it stopped."""
    rng = np.random.default_rng(order_seed)
    order = [int(i) for i in rng.permutation(len(hits))]
    cases: list[BlendCase] = []
    if resume is not None and resume.exists():
        known = {h.user_id: h for h in hits}
        for line in resume.read_text().splitlines():
            c = BlendCase(**json.loads(line))
            h = known.pop(c.user_id, None)  # only users of this run, each once
            if h is not None and h.retrieval == c.retrieval and h.target == c.target:
                cases.append(c)
    done = {c.user_id for c in cases}
    order = [i for i in order if hits[i].user_id not in done]
    resumed = len(cases)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    for start in range(0, len(order), batch):
        # at least one batch per run, so a resumed run always gets further
        if start and budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
        chunk = [hits[i] for i in order[start : start + batch]]
        lists = [
            (
                UserContext(history=[products[p] for p in h.history if p in products]),
                [Candidate(p, s, {}) for p, s in zip(h.candidates, h.retrieval, strict=True)],
            )
            for h in chunk
        ]
        try:
            llm = reranker.score_many(lists, products, timings)
            degraded = [False] * len(chunk)
        except Exception:  # noqa: BLE001 - one user at a time, as served
            llm, degraded = [], []
            for ctx, cands in lists:
                res = reranker.rank(ctx, cands, products)
                by_id = dict(res.order)
                llm.append([float(by_id[c.product_id]) for c in cands])
                degraded.append(bool(res.degraded))
        new = [
            BlendCase(h.user_id, h.retrieval, s, h.target, d)
            for h, s, d in zip(chunk, llm, degraded, strict=True)
        ]
        cases += new
        if resume is not None:
            with resume.open("a") as f:
                f.writelines(json.dumps(asdict(c)) + "\n" for c in new)
        print(
            f"  {len(cases)}/{len(hits)} hit users scored, {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return {
        "cases": cases,
        "scored": len(cases),
        "resumed": resumed,
        "llm_wall_s": round(time.perf_counter() - t0, 1),
        "prompts_s": round(timings.get("prompts_s", 0.0), 1),
        "llm_s": round(timings.get("llm_s", 0.0), 1),
        "prompts": int(timings.get("prompts", 0)),
    }


def _llm_reranker(
    backend: str, model: str, threads: int, adapter: Path | None = None
) -> VerbalizerReranker:
    s = Settings(llm_backend=backend, llm_model=model, llm_threads=threads)  # type: ignore[arg-type]
    llm = get_llm(s)
    if adapter is not None:  # the LoRA-tuned verbalizer (transformers: merged in memory)
        llm = load_adapter_into(llm, adapter)
    return VerbalizerReranker(llm)


def _shortlists(
    args: argparse.Namespace, ds: Any, split: Any, rows: np.ndarray, users: list[str]
) -> dict[str, dict[str, Any]]:
    """Per target: the hit users' shortlists (read from --shortlists when it exists, else
    computed over the service's stores and saved there)."""
    cache = args.shortlists
    if cache is not None and cache.exists():
        data = json.loads(cache.read_text())
        if data["users"] == users and data["dataset"] == ds.name:
            return {
                t: {**v, "hits": [HitUser(**h) for h in v["hits"]], "cached": True}
                for t, v in data["targets"].items()
            }
    encoder = default_encoder()
    if args.fusion is not None:
        fusion, _status = load_fusion(args.fusion, strict=True)
        assert fusion is not None
    else:
        fusion = fit_fusion_on_validation(ds, split, rows, encoder).fusion
    out: dict[str, dict[str, Any]] = {}
    for target in ("val", "test"):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"recsmith-blend-{target}-") as tmp:
            root = Path(tmp)
            Fusion.save(fusion, root / "artefacts" / "fusion.json")
            app = application_over(root, encoder, ds, split, target)
            setup_s = time.perf_counter() - t0
            tg = split.targets(target)
            got = collect_shortlists(app, users, [split.item_ids[tg[r]] for r in rows])
            got["setup_s"] = round(setup_s, 1)
        out[target] = got
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        plain = {t: {**v, "hits": [asdict(h) for h in v["hits"]]} for t, v in out.items()}
        cache.write_text(json.dumps({"dataset": ds.name, "users": users, "targets": plain}))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=None, help="seeded sample (default all)")
    ap.add_argument(
        "--minutes", type=float, default=None, help="LLM budget per target (default: none)"
    )
    ap.add_argument("--val-minutes", type=float, default=None, help="default: --minutes")
    ap.add_argument("--backend", default="transformers", help="the served ranker default")
    ap.add_argument("--model", default="default")
    ap.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="users per model call")
    ap.add_argument("--fusion", type=Path, default=None, help="a fitted fusion.json to serve")
    ap.add_argument(
        "--shortlists", type=Path, default=None, help="hit users' shortlists: read or saved"
    )
    ap.add_argument(
        "--resume", type=Path, default=None, help="scores so far: <this>.{val,test}.jsonl"
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="save the blend here")
    ap.add_argument("--out", type=Path, default=Path("eval/results"))
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    ds = load(args.dataset)
    split = leave_last_two_out(ds, "item_id")
    rows = np.arange(len(split.users))
    if args.users is not None and args.users < len(rows):
        rows = np.sort(np.random.default_rng(0).choice(len(rows), args.users, replace=False))
    users = [split.users[r] for r in rows]
    per_target = _shortlists(args, ds, split, rows, users)
    shortlists_wall = time.perf_counter() - t_start
    products = {p.id: p for p in ds.products}

    t_load = time.perf_counter()
    reranker = _llm_reranker(args.backend, args.model, args.threads, args.adapter)
    _ = reranker.llm  # load the model outside the timed scoring
    load_s = time.perf_counter() - t_load
    val_minutes = args.minutes if args.val_minutes is None else args.val_minutes
    for target in ("val", "test"):
        minutes = val_minutes if target == "val" else args.minutes
        budget = None if minutes is None else 60 * minutes
        got = per_target[target]
        hits = got.pop("hits")
        got["hit_users"] = len(hits)
        resume = None if args.resume is None else args.resume.with_suffix(f".{target}.jsonl")
        got.update(score_hits(hits, products, reranker, budget, args.batch, resume=resume))
        got["wall_s"] = round(got.get("setup_s", 0.0) + got["shortlist_s"] + got["llm_wall_s"], 1)
    val, test = per_target["val"], per_target["test"]
    blend, by_w_val = fit_blend(val["cases"], val["users"])
    # On the test target: every weight, so the report can show the whole curve.
    by_w_test = {f"{w:g}": round(ndcg10(test["cases"], test["users"], w), 5) for w in WEIGHT_GRID}

    # When the LLM covered a sample of the hit users, scale to an all-user estimate.
    def scale(got: dict[str, Any]) -> float:
        return got["hit_users"] / max(got["scored"], 1)

    llm_name = f"{args.backend}:{args.model}" + (f"+{args.adapter}" if args.adapter else "")
    blend.info = {
        "fitted_on": "validation target (each user's second-to-last item)",
        "objective": "NDCG@10 of the served top 20 reordered",
        "validation_ndcg10_by_weight": {k: round(v, 5) for k, v in by_w_val.items()},
        "validation_users": val["users"],
        "validation_hit_users_scored": val["scored"],
        "validation_hit_users": val["hit_users"],
        "llm": llm_name,
        "dataset": ds.name,
    }
    if args.data_dir is not None:
        blend.save(args.data_dir / BLEND_FILE)
    sc = scale(test)
    blended = ndcg10(test["cases"], test["users"], blend.weight) * sc
    for got in per_target.values():
        got["degraded"] = sum(c.degraded for c in got["cases"])
        got["cases"] = [asdict(c) for c in got["cases"]]
    llm = reranker.llm
    out: dict[str, Any] = {
        "dataset": ds.name,
        "users": len(rows),
        "llm": llm_name,
        "backend": args.backend,
    }
    out.update(
        {
            "weight": blend.weight,
            "blend": blend.to_dict(),
            "val_ndcg10_by_weight": by_w_val,
            "test_ndcg10_by_weight_on_scored": by_w_test,
            "test_scale_to_all_users": scale(test),
            "targets": per_target,
            "batch_users": args.batch,
            "shortlists_wall_s": round(shortlists_wall, 1),
            "model_load_s": round(load_s, 1),
            "llm_health": llm.health() if hasattr(llm, "health") else {},
            "wall_s": round(time.perf_counter() - t_start, 1),
            "loadavg_start": [round(x, 2) for x in load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"2026-11-30-rerank-blend-{ds.name}{'-' + args.tag if args.tag else ''}.json"
    (args.out / name).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(
        f"weight {blend.weight:g}; test (scored {test['scored']}/{test['hit_users']} hit users"
        f" of {test['users']}): shortlist {by_w_test['0'] * sc:.4f}, LLM "
        f"{by_w_test['1'] * sc:.4f}, blended {blended:.4f}; val scored {val['scored']}/"
        f"{val['hit_users']}; wall {out['wall_s']:.0f} s (shortlists {shortlists_wall:.0f}, "
        f"model load {load_s:.0f}, LLM {val['llm_wall_s'] + test['llm_wall_s']:.0f}) "
        f"-> {args.out / name}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
