"""Write a ranking run as JSON (everything), Markdown (the table and honest notes) and a
PNG (NDCG@10 against latency per user), and print the table."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eval.ranking import MethodResult, RankingRun

COLUMNS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr")
HEADERS = ("R@5", "R@10", "R@20", "N@5", "N@10", "N@20", "MRR")

# The notes' reference figures (ML-100k, test target, all 943 users, time ties by item id):
# method name here -> (Recall@10, NDCG@10, Recall@20, MRR).
REFERENCE_ML100K: dict[str, tuple[float, float, float, float]] = {
    "popularity": (0.050, 0.025, 0.080, 0.026),
    "item-kNN (whole history)": (0.059, 0.028, 0.114, 0.029),
    "item-kNN (last 3)": (0.126, 0.069, 0.210, 0.066),
    "item-kNN (last 20, 0.5^age)": (0.151, 0.082, 0.229, 0.074),
    "EASE": (0.086, 0.039, 0.154, 0.039),
    "content": (0.028, 0.014, 0.057, 0.017),
}


def stem(run: RankingRun, day: date | None = None) -> str:
    return f"{(day or date.today()).isoformat()}-ranking-{run.dataset}"


def _latency(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms * 1000:.0f} µs"


def _row(r: MethodResult) -> list[str]:
    cells = [r.name] + [f"{r.test.get(c, float('nan')):.3f}" for c in COLUMNS]
    sl = "–" if r.shortlist_recall is None else f"{r.shortlist_recall:.3f}"
    return cells + [sl, _latency(r.latency_ms), str(r.users)]


def table_markdown(results: list[MethodResult]) -> str:
    head = ["method", *HEADERS, "shortlist R@20", "latency/user", "users"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in results]
    return "\n".join(lines)


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def _reference_section(run: RankingRun) -> list[str]:
    if run.dataset != "ml-100k" or run.tie_break != "item_id":
        return []
    out = [
        "## Against the reference figures (notes/datasets.md)",
        "",
        f"Ours on {run.users_evaluated} users (the reference used all 943).",
        "",
        "| method | R@10 ours / ref | N@10 ours / ref | R@20 ours / ref | MRR ours / ref |",
        "|---|---|---|---|---|",
    ]
    for r in run.results:
        if r.kind != "baseline":
            continue
        key = next((k for k in REFERENCE_ML100K if r.name == k or r.name.startswith(k + ",")), None)
        if key is None and r.name.startswith("content"):
            key = "content"
        if key is None:
            continue
        ref = REFERENCE_ML100K[key]
        ours = (r.test["recall@10"], r.test["ndcg@10"], r.test["recall@20"], r.test["mrr"])
        cells = [f"{o:.3f} / {f:.3f}" for o, f in zip(ours, ref, strict=True)]
        out.append(f"| {r.name} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def markdown(run: RankingRun, command: str = "") -> str:
    n = run.users_evaluated
    lines = [f"# Offline ranking evaluation: {run.dataset}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    st = run.stats
    lines += [
        f"Run {run.started} UTC. Data: {st['products']:,} products, {st['users']:,} users, "
        f"{st['interactions']:,} interactions. Users evaluated: {n} of {run.users_total}"
        + (f" (seeded sample, seed {run.seed})" if n < run.users_total else "")
        + ". Target: each user's last item (test); EASE's λ tuned on the one before it "
        "(validation).",
        "",
        table_markdown(run.results),
        "",
        "R = Recall, N = NDCG, MRR over the full ranking. *shortlist R@20*: is the target in "
        "the 20 items a reranker would see (for baselines, their own top 20). *latency/user*: "
        "baselines are scored in batches, so theirs is the batch time divided by users (fit "
        "time excluded, see JSON); recsmith retrieval is one `Retriever.candidates` call per "
        "user; reranker rows add the rerank call to it.",
        "",
        "## Notes",
        "",
    ]
    tie = "item id" if run.tie_break == "item_id" else "their original order in the log"
    lines.append(
        f"- Time order: each user's interactions are sorted by timestamp, ties by {tie} "
        "(stable sort); a repeated item counts once (its first time). Scores: equal scores "
        "are ordered by item id (stable). The JSON also has each baseline's expected metrics "
        "under random ordering of equal scores (`expected_random_ties`)."
    )
    p = next((r.test["recall@10"] for r in run.results if r.kind == "baseline"), 0.1)
    lines.append(
        f"- Noise: one target per user, {n} users: the standard error of a Recall@10 near "
        f"{p:.2f} is ±{_se(p, n):.3f}; differences under about {2 * _se(0.15, n):.3f} in "
        "Recall@10 are within noise."
    )
    lines.append(
        "- recsmith retrieval rows: the service's `Retriever` over a temporary store holding "
        "every user's test history (never a test target), items already seen excluded. Each "
        "source is scored on its own top 20; past the shortlist the ranking continues by the "
        "source's base score over the whole catalogue (dense: cosine to the recency-weighted "
        "profile; co-interaction: its normalised co-counts; hybrid: weighted RRF of both), "
        "which affects only MRR."
    )
    for note in run.notes:
        lines.append(f"- {note}")
    best = run.best_baseline()
    ours = [r for r in run.results if r.kind in ("retrieval", "rerank") and r.users == n]
    if best and ours:
        top = max(ours, key=lambda r: r.test["ndcg@10"])
        diff = top.test["ndcg@10"] - best.test["ndcg@10"]
        verdict = "beats" if diff > 0 else "does not beat"
        lines.append(
            f"- Verdict: the best recsmith pipeline on all evaluated users ({top.name}, "
            f"NDCG@10 {top.test['ndcg@10']:.3f}) {verdict} the strongest baseline "
            f"({best.name}, {best.test['ndcg@10']:.3f}); Recall@10 "
            f"{top.test['recall@10']:.3f} vs {best.test['recall@10']:.3f}."
        )
    rr = [r for r in run.results if r.kind == "rerank"]
    if rr:
        lines.append(
            f"- Rerankers ran on a seeded sample of {rr[0].users} users: compare them with the "
            "'rerank sample' retrieval row (same users), not with the all-user rows. "
            + " ".join(f"{r.name}: {r.note}." for r in rr)
        )
    lines.append("")
    lines += _reference_section(run)
    if run.sensitivity:
        other = run.sensitivity[0].note
        lines += [
            f"## Sensitivity: baselines with {other}",
            "",
            "On ML-100k 44 % of users share a timestamp between their last two items, so how "
            "time ties are broken decides which item is the target.",
            "",
            table_markdown(run.sensitivity),
            "",
        ]
    lines += [
        "## Timings (s)",
        "",
        ", ".join(f"{k}: {v}" for k, v in run.timings_s.items()),
        "",
    ]
    return "\n".join(lines)


def plot(run: RankingRun, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"baseline": "tab:blue", "retrieval": "tab:green", "rerank": "tab:red"}
    for r in run.results:
        x = max(r.latency_ms, 1e-3)
        ax.scatter(x, r.test["ndcg@10"], color=colors.get(r.kind, "k"), s=30)
        ax.annotate(r.name, (x, r.test["ndcg@10"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("latency per user (ms, log scale)")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(f"{run.dataset}: NDCG@10 vs latency ({run.users_evaluated} users)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    run: RankingRun, out_dir: Path, command: str = "", day: date | None = None
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / stem(run, day)
    paths = {
        "json": base.with_suffix(".json"),
        "md": base.with_suffix(".md"),
        "png": base.with_suffix(".png"),
    }
    data = run.as_dict() | {"command": command}
    paths["json"].write_text(
        json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths["md"].write_text(markdown(run, command), encoding="utf-8")
    plot(run, paths["png"])
    return paths


def print_table(run: RankingRun, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"{run.dataset}: test target, {run.users_evaluated} users")
    for h in ("method", *HEADERS, "shortlist R@20", "latency/user", "users"):
        t.add_column(h, justify="left" if h == "method" else "right")
    for r in run.results:
        t.add_row(*_row(r))
    console.print(t)
    for note in run.notes:
        if "skipped" in note:
            console.print(f"[yellow]{note}[/yellow]")
