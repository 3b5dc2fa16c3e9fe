"""The LLM stage made safe by construction (issue 11): the verbalizer's scores blended with
its shortlist's, the weight fitted on the validation target, reported on the test target.

For each user the served shortlist (`service.recommend.shortlist`, top 20, over a store of
the histories for that target with the fitted fusion loaded) is scored once by the
verbalizer (no blend); the blend is then pure arithmetic over the saved scores, so every
weight of the grid is evaluated on the same LLM calls. A user whose target is outside the
shortlist scores 0 in NDCG@10 whatever the order, so only users with the target inside
need the model: a run that covers all of them is exact over all users.

    python -m eval.ranking_blend --dataset ml-100k --minutes 8 --out eval/results

writes the fitted blend to `<data dir>/artefacts/rerank_blend.json` (with --data-dir) and a
JSON of the per-weight validation and test NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from service.ranking.blend import BLEND_FILE, WEIGHT_GRID, RerankBlend
from service.ranking.verbalizer import VerbalizerReranker
from service.recommend import shortlist
from service.retrieval.fusion import Fusion, load_fusion
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


def collect_cases(
    app: Any,
    users: Sequence[str],
    targets: Sequence[str],
    reranker: Any,
    budget_s: float,
    order_seed: int = 0,
    size: int = SHORTLIST,
) -> dict[str, Any]:
    """Shortlists for every user; the LLM on the users whose target is inside, in a seeded
    random order for at most `budget_s` seconds (counted from the first LLM call).
    Returns cases and counts."""

    rs = app.engine
    hits: list[tuple[str, str, Any]] = []
    t0 = time.perf_counter()
    for user, target in zip(users, targets, strict=True):
        sl = shortlist(rs, user_id=user, k=size, size=size)
        ids = [c.product_id for c in sl.candidates]
        if target in ids:
            hits.append((user, target, sl))
    shortlist_s = time.perf_counter() - t0
    rng = np.random.default_rng(order_seed)
    order = rng.permutation(len(hits))
    cases: list[BlendCase] = []
    t1 = time.perf_counter()
    deadline = time.monotonic() + budget_s
    for i in order:
        if time.monotonic() > deadline:
            break
        user, target, sl = hits[int(i)]
        result = reranker.rank(sl.context, list(sl.candidates), sl.products)
        llm_by_id = dict(result.order)
        ids = [c.product_id for c in sl.candidates]
        cases.append(
            BlendCase(
                user,
                [float(c.score) for c in sl.candidates],
                [float(llm_by_id.get(p, -1e9)) for p in ids],
                ids.index(target),
                bool(result.degraded),
            )
        )
    return {
        "cases": cases,
        "users": len(users),
        "hit_users": len(hits),
        "scored": len(cases),
        "shortlist_s": round(shortlist_s, 1),
        "llm_s": round(time.perf_counter() - t1, 1),
    }


def _llm_reranker(backend: str, model: str, threads: int) -> Any:

    s = Settings(llm_backend=backend, llm_model=model, llm_threads=threads)  # type: ignore[arg-type]
    return VerbalizerReranker(get_llm(s))


def main(argv: Sequence[str] | None = None) -> int:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=None, help="seeded sample (default all)")
    ap.add_argument("--minutes", type=float, default=8.0, help="LLM budget per target")
    ap.add_argument("--backend", default="llamacpp")
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fusion", type=Path, default=None, help="a fitted fusion.json to serve")
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
    encoder = default_encoder()

    if args.fusion is not None:
        fusion, _status = load_fusion(args.fusion, strict=True)
        assert fusion is not None
    else:
        fusion = fit_fusion_on_validation(ds, split, rows, encoder).fusion
    reranker = _llm_reranker(args.backend, args.model, args.threads)
    out: dict[str, Any] = {"dataset": ds.name, "users": len(rows), "backend": args.backend}
    per_target: dict[str, dict[str, Any]] = {}
    for target in ("val", "test"):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"recsmith-blend-{target}-") as tmp:
            root = Path(tmp)
            Fusion.save(fusion, root / "artefacts" / "fusion.json")
            app = application_over(root, encoder, ds, split, target)
            tg = split.targets(target)
            got = collect_cases(
                app,
                users,
                [split.item_ids[tg[r]] for r in rows],
                reranker,
                60 * args.minutes,
            )
        got["wall_s"] = round(time.perf_counter() - t0, 1)
        per_target[target] = got
    val, test = per_target["val"], per_target["test"]
    blend, by_w_val = fit_blend(val["cases"], val["users"])
    # On the test target: every weight, so the report can show the whole curve.
    by_w_test = {f"{w:g}": round(ndcg10(test["cases"], test["users"], w), 5) for w in WEIGHT_GRID}

    # When the LLM covered a sample of the hit users, scale to an all-user estimate.
    def scale(got: dict[str, Any]) -> float:
        return got["hit_users"] / max(got["scored"], 1)

    blend.info = {
        "fitted_on": "validation target (each user's second-to-last item)",
        "objective": "NDCG@10 of the served top 20 reordered",
        "validation_ndcg10_by_weight": {k: round(v, 5) for k, v in by_w_val.items()},
        "validation_users": val["users"],
        "validation_hit_users_scored": val["scored"],
        "validation_hit_users": val["hit_users"],
        "llm": f"{args.backend}:{args.model}",
        "dataset": ds.name,
    }
    if args.data_dir is not None:
        blend.save(args.data_dir / BLEND_FILE)
    sc = scale(test)
    blended = ndcg10(test["cases"], test["users"], blend.weight) * sc
    for got in per_target.values():
        got["degraded"] = sum(c.degraded for c in got["cases"])
        got["cases"] = [asdict(c) for c in got["cases"]]
    out.update(
        {
            "weight": blend.weight,
            "blend": blend.to_dict(),
            "val_ndcg10_by_weight": by_w_val,
            "test_ndcg10_by_weight_on_scored": by_w_test,
            "test_scale_to_all_users": scale(test),
            "targets": {k: {kk: vv for kk, vv in v.items()} for k, v in per_target.items()},
            "wall_s": round(time.perf_counter() - t_start, 1),
            "loadavg_start": [round(x, 2) for x in load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"2026-11-30-rerank-blend-{ds.name}{'-' + args.tag if args.tag else ''}.json"
    (args.out / name).write_text(json.dumps(out, indent=1) + "\n")
    print(
        f"weight {blend.weight:g}; test (scored {test['scored']}/{test['hit_users']} hit users"
        f" of {test['users']}): shortlist {by_w_test['0'] * sc:.4f}, LLM "
        f"{by_w_test['1'] * sc:.4f}, blended {blended:.4f}"
        f"; wall {out['wall_s']:.0f} s -> {args.out / name}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
