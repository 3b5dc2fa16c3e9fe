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


def stem(run: RankingRun, day: date | None = None, tag: str = "") -> str:
    return f"{(day or date.today()).isoformat()}-ranking-{run.dataset}" + (f"-{tag}" if tag else "")


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
    if run.users_evaluated < run.users_total:
        return [
            "The reference figures in the notes are for all 943 users; this run used a "
            f"sample of {run.users_evaluated}, so they are not compared here.",
            "",
        ]
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
    out += [
        "",
        "The content row depends on the product text that is embedded (ours: "
        "`Product.embedding_text()`: title with year, genre as category, a one-line "
        "description, genres as tags), which the reference does not state, so a gap there is "
        "expected; the other rows use interactions only and should agree within noise.",
        "",
    ]
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
    best = run.best_baseline()
    p = best.test["recall@10"] if best else 0.15
    se = _se(p, n)
    lines.append(
        f"- Noise: one target per user, {n} users: the standard error of a Recall@10 near "
        f"{p:.2f} is ±{se:.3f}, so a difference between two methods under about "
        f"{2 * math.sqrt(2) * se:.3f} is within noise (paired methods on the same users vary "
        "less, but treat smaller gaps as ties)."
    )
    if any(r.kind == "retrieval" for r in run.results):
        lines.append(
            "- recsmith retrieval rows: the service's `Retriever` over a temporary store "
            "holding every user's test history (never a test target), items already seen "
            "excluded (stored as the user's purchases). Each source is scored on its own list "
            "(the hybrid on the fused pool of all lists); a target past the list is a miss, "
            "so MRR is a lower bound. `recsmith pipeline` calls `Application.recommend`, "
            "the method /v1/recommendations runs, on every user."
        )
    for note in run.notes:
        lines.append(f"- {note}")
    ours = [r for r in run.results if r.kind in ("retrieval", "rerank") and r.users == n]
    if best and ours:
        noise = 2 * math.sqrt(2) * se

        def compare(r: MethodResult) -> str:
            d_ndcg = r.test["ndcg@10"] - best.test["ndcg@10"]
            d_rec = r.test["recall@10"] - best.test["recall@10"]
            if abs(d_rec) < noise and abs(d_ndcg) < noise / 2:
                verdict = "is on par with (within noise)"
            else:
                verdict = "beats" if d_ndcg > 0 else "does not beat"
            return (
                f"{verdict} the strongest baseline ({best.name}): NDCG@10 "
                f"{r.test['ndcg@10']:.3f} vs {best.test['ndcg@10']:.3f} (Δ {d_ndcg:+.3f}), "
                f"Recall@10 {r.test['recall@10']:.3f} vs {best.test['recall@10']:.3f} "
                f"(Δ {d_rec:+.3f})"
            )

        # What the service serves: the `recsmith pipeline` row (recommend() itself) when the
        # run has one, else the hybrid shortlist.
        served = next((r for r in ours if r.name == "recsmith pipeline"), None) or next(
            (r for r in ours if "hybrid" in r.name and r.kind == "retrieval"), None
        )
        top = max(ours, key=lambda r: r.test["ndcg@10"])
        if served is not None:
            lines.append(f"- Verdict: the service's retrieval as configured ({served.name}) "
                         f"{compare(served)}.")  # fmt: skip
        if top is not served:
            lines.append(f"- Its best single part on all evaluated users ({top.name}) "
                         f"{compare(top)}.")  # fmt: skip
    parts = {r.name: r for r in run.results if r.kind == "retrieval" and r.users == n}
    hyb = next((r for k, r in parts.items() if "hybrid" in k and "sample" not in k), None)
    srcs = [r for k, r in parts.items() if r is not hyb and "sample" not in k]
    if hyb and srcs:
        top_src = max(srcs, key=lambda r: r.test["ndcg@10"])
        if top_src.test["ndcg@10"] > hyb.test["ndcg@10"]:
            lines.append(
                f"- The hybrid loses to its best single source: {top_src.name} has NDCG@10 "
                f"{top_src.test['ndcg@10']:.3f} and shortlist R@20 {top_src.shortlist_recall:.3f}"
                f", the hybrid {hyb.test['ndcg@10']:.3f} and {hyb.shortlist_recall:.3f}. RRF "
                "with equal weights lets the weaker source push good candidates out of the top 20. "
                "Source weights "
                "(service.retrieval.retriever.SourceWeights) are worth tuning on the validation "
                "target."
            )
    if run.machine:
        lines.append(
            f"- Latencies were measured on {run.machine.get('cpus')} CPU cores with a load "
            f"average of {run.machine.get('loadavg_1m_at_start')} at the start (a shared "
            "machine): compare them with each other, not with a production budget."
        )
    rr = [r for r in run.results if r.kind == "rerank"]
    if rr:
        lines.append(
            f"- Rerankers ran on a seeded sample of {rr[0].users} users: compare them with the "
            "'rerank sample' retrieval row (same users), not with the all-user rows. "
            + " ".join(f"{r.name}: {r.note}." for r in rr)
        )
        m = rr[0].users
        if m < 200:
            lines.append(
                f"- With {m} users only a Recall@10 gap above about "
                f"{2 * math.sqrt(2) * _se(0.3, m):.2f} would show: the rerank rows check the "
                "plumbing and measure latency; they are no verdict on ranking quality."
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
    # lazy: matplotlib adds ~0.5 s (eval/bench_startup.py); only the plot needs it, not tables
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above, and after use("Agg")

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"baseline": "tab:blue", "retrieval": "tab:green", "rerank": "tab:red"}
    for r in run.results:
        x = max(r.latency_ms, 1e-3)
        ax.scatter(x, r.test["ndcg@10"], color=colors.get(r.kind, "k"), s=30)
        ax.annotate(r.name, (x, r.test["ndcg@10"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    xs = [max(r.latency_ms, 1e-3) for r in run.results] or [1.0]
    ax.set_xlim(min(xs) / 2, max(xs) * 40)  # room for the labels on the right
    for kind, color in colors.items():
        ax.scatter([], [], color=color, label=kind)
    ax.legend(loc="center right", fontsize=8)
    ax.set_xlabel("latency per user (ms, log scale)")
    ax.set_ylabel("NDCG@10 (test)")
    ax.set_title(f"{run.dataset}: NDCG@10 vs latency ({run.users_evaluated} users)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    run: RankingRun, out_dir: Path, command: str = "", day: date | None = None, tag: str = ""
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / stem(run, day, tag)
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


def load_run(path: Path) -> RankingRun:
    """A run back from its JSON file (to rewrite the Markdown and the plot)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data.pop("command", None)
    for key in ("results", "sensitivity"):
        data[key] = [MethodResult(**r) for r in data.get(key, [])]
    return RankingRun(**data)


def rewrite(json_path: Path) -> dict[str, Path]:
    """Markdown and plot again from a run's JSON (after a change to the report only)."""
    json_path = Path(json_path)
    command = json.loads(json_path.read_text(encoding="utf-8")).get("command", "")
    run = load_run(json_path)
    md, png = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    md.write_text(markdown(run, command), encoding="utf-8")
    plot(run, png)
    return {"json": json_path, "md": md, "png": png}


def print_table(run: RankingRun, console: Console | None = None) -> None:
    if console is None:
        # Piped output would otherwise be cut to 80 columns and wrap every cell.
        console = Console() if Console().is_terminal else Console(width=180)
    t = Table(title=f"{run.dataset}: test target, {run.users_evaluated} users")
    for h in ("method", *HEADERS, "shortlist R@20", "latency/user", "users"):
        left = h == "method"
        t.add_column(h, justify="left" if left else "right", no_wrap=not left, min_width=None)
    for r in run.results:
        t.add_row(*_row(r))
    console.print(t)
    for note in run.notes:
        if "skipped" in note:
            console.print(f"[yellow]{note}[/yellow]")
