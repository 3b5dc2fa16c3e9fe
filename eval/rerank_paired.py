"""Two verbalizers over the same saved shortlists, side by side per user (issue 11).

Reads the shortlists file and the per-user score files (`<resume>.{val,test}.jsonl`) that
`python -m eval.ranking_blend --shortlists S --resume R` writes, for a base run and a
tuned run (e.g. `--adapter …/reranker-lora`), and reports per target: NDCG@10 over all
users (users whose target is outside the top 20 score 0 in every row, so a row over every
hit user is exact) for the shortlist, each LLM alone and each fitted blend, and the
per-user paired differences ± SE on the hit users both runs scored. Each blend weight is
fitted on the validation users that every run scored (grid 0, 0.05, …, 1, ties to the smaller
weight, as `eval.ranking_blend.fit_blend`). Also a few test users' top 3 side by side.

    python -m eval.rerank_paired --shortlists S.json --base R0 --tuned R1 --out X.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.ranking_blend import BlendCase, fit_blend
from service.offline.datasets import load
from service.ranking.blend import RerankBlend


def read_cases(path: Path) -> dict[str, BlendCase]:
    """user id -> scored case (the last line wins: a resumed run appends)."""
    out: dict[str, BlendCase] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            c = BlendCase(**json.loads(line))
            out[c.user_id] = c
    return out


def user_ndcg(c: BlendCase, weight: float) -> float:
    """NDCG@10 of one hit user's shortlist reordered by the blend (one relevant item)."""
    rank = RerankBlend(weight).order(c.retrieval, c.llm).index(c.target) + 1
    return 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0


def mean_se(x: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(x, dtype=np.float64)
    if len(a) < 2:
        return (float(a.mean()) if len(a) else math.nan), math.nan
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a)))


def label_stats(cases: Sequence[BlendCase]) -> dict[str, float]:
    """How peaked the LLM's distribution over the 20 labels is and where it points, in
    served order (label A = the shortlist's first): mean entropy (uniform = ln 20), mean
    probability at served positions 1 and 20, share of users whose top label is A."""
    if not cases:
        return {}
    lp = np.array([c.llm for c in cases], dtype=np.float64)
    p = np.exp(lp - np.logaddexp.reduce(lp, axis=1, keepdims=True))
    return {
        "entropy": float(-(p * np.log(np.clip(p, 1e-300, None))).sum(1).mean()),
        "uniform_entropy": math.log(lp.shape[1]),
        "p_first": float(p[:, 0].mean()),
        "p_last": float(p[:, -1].mean()),
        "top_is_first": float(np.mean(p.argmax(1) == 0)),
    }


def compare(
    shortlists: dict[str, Any], runs: dict[str, dict[str, dict[str, BlendCase]]]
) -> dict[str, Any]:
    """Per target: rows over all users and paired differences on the common hit users."""
    # Every run's weight on the same validation users (those all runs scored): a fair pair.
    val_common = set.intersection(*(set(r["val"]) for r in runs.values()))
    weights = {
        name: fit_blend(
            [c for u, c in r["val"].items() if u in val_common],
            shortlists["targets"]["val"]["users"],
        )
        for name, r in runs.items()
    }
    out: dict[str, Any] = {
        "weights": {n: w.weight for n, (w, _) in weights.items()},
        "weights_fitted_on_val_users": len(val_common),
        "val_ndcg10_by_weight_on_scored": {n: curve for n, (_, curve) in weights.items()},
    }
    for target in ("val", "test"):
        info = shortlists["targets"][target]
        n_users, hits = info["users"], [h["user_id"] for h in info["hits"]]
        common = [u for u in hits if all(u in r[target] for r in runs.values())]
        first = next(iter(runs.values()))[target]
        per: dict[str, list[float]] = {"shortlist": [user_ndcg(first[u], 0.0) for u in common]}
        for name, r in runs.items():
            w = weights[name][0].weight
            per[f"{name} alone"] = [user_ndcg(r[target][u], 1.0) for u in common]
            per[f"{name} blend (w={w:g})"] = [user_ndcg(r[target][u], w) for u in common]
        rows = {k: float(np.sum(v)) / n_users for k, v in per.items()}
        on_hits = {k: float(np.mean(v)) if v else math.nan for k, v in per.items()}
        keys = list(per)
        diffs = {}
        for a in keys[1:]:
            diffs[f"{a} - shortlist"] = mean_se(np.subtract(per[a], per["shortlist"]))
        names = list(runs)
        if len(names) == 2:
            b, t = names
            for kind in ("alone", "blend"):
                ka = next(k for k in keys if k.startswith(f"{t} {kind}"))
                kb = next(k for k in keys if k.startswith(f"{b} {kind}"))
                diffs[f"{ka} - {kb}"] = mean_se(np.subtract(per[ka], per[kb]))
        out[target] = {
            "label_distribution": {
                n: label_stats([r[target][u] for u in common]) for n, r in runs.items()
            },
            "users": n_users,
            "hit_users": len(hits),
            "scored_by_all_runs": len(common),
            "exact": len(common) == len(hits),
            "ndcg10_all_users": rows if len(common) == len(hits) else None,
            "ndcg10_on_scored_hit_users": on_hits,
            "paired_per_hit_user": {k: {"mean": m, "se": s} for k, (m, s) in diffs.items()},
        }
    return out


def top3_examples(
    shortlists: dict[str, Any],
    runs: dict[str, dict[str, dict[str, BlendCase]]],
    n: int = 4,
    dataset: str = "ml-100k",
) -> list[dict[str, Any]]:
    """The test users whose target the tuned run (alone) moved most up and most down,
    top 3 of each row."""
    titles = {p.id: p.title for p in load(dataset).products}
    names = list(runs)
    hits = {h["user_id"]: h for h in shortlists["targets"]["test"]["hits"]}
    common = [u for u in hits if all(u in r["test"] for r in runs.values())]
    moved = sorted(  # most improved first, most worsened last
        common,
        key=lambda u: (
            user_ndcg(runs[names[0]]["test"][u], 1.0) - user_ndcg(runs[names[-1]]["test"][u], 1.0)
        ),
    )
    out = []
    for u in moved[: n // 2] + moved[-(n - n // 2) :]:
        h = hits[u]
        row: dict[str, Any] = {
            "user": u,
            "history_last_3": [titles.get(p, p) for p in h["history"][-3:]],
            "target": titles.get(h["candidates"][h["target"]], "?"),
            "shortlist": [titles.get(p, p) for p in h["candidates"][:3]],
        }
        for name in names:
            c = runs[name]["test"][u]
            order = RerankBlend(1.0).order(c.retrieval, c.llm)
            row[name] = [titles.get(h["candidates"][i], "?") for i in order[:3]]
            row[f"{name} target rank"] = order.index(c.target) + 1
        out.append(row)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shortlists", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True, help="the untuned run's --resume")
    ap.add_argument("--tuned", type=Path, required=True, help="the tuned run's --resume")
    ap.add_argument("--names", default="untuned,tuned")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for p in (args.shortlists,):
        if not p.exists():
            print(f"error: {p} not found", file=sys.stderr)
            return 2
    sl = json.loads(args.shortlists.read_text())
    names = args.names.split(",")
    runs = {
        names[0]: {t: read_cases(args.base.with_suffix(f".{t}.jsonl")) for t in ("val", "test")},
        names[1]: {t: read_cases(args.tuned.with_suffix(f".{t}.jsonl")) for t in ("val", "test")},
    }
    res = compare(sl, runs)
    res["examples"] = top3_examples(sl, runs, dataset=sl["dataset"])
    text = json.dumps(res, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
