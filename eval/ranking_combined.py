"""One ranking report over several `recsmith eval ranking` runs (one per data set) and the
rerank-blend run (eval/ranking_blend.py): a summary with the goals of issue 11, minutes
beside the metrics, then each run's own report (eval.report.markdown).

    python -m eval.ranking_combined RUN.json [RUN.json ...] [--blend BLEND.json] --out FILE.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.ranking import PIPELINE, RankingRun
from eval.report import load_run, markdown


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def summary_rows(run: RankingRun) -> list[str]:
    best = run.best_baseline()
    pipe = next((r for r in run.results if r.name == PIPELINE), None)
    t = run.timings_s
    rows = []
    for r in run.results:
        if r.kind == "baseline":
            fit_s = r.params.get("fit_s")
            minutes = f"fit {_minutes(fit_s)}, eval {_minutes(r.latency_ms * r.users / 1000)}"
        elif r.name == PIPELINE:
            setup = t.get("recsmith_setup_incl_fusion_fit")
            total = t.get("recsmith")
            served = r.latency_ms * r.users / 1000
            minutes = (
                f"fit+stores {_minutes(setup)}, eval {_minutes(served)} "
                f"(all recsmith {_minutes(total)})"
            )
        else:
            minutes = f"eval {_minutes(r.latency_ms * r.users / 1000)} (one call, all sources)"
        mark = " **(strongest baseline)**" if best is not None and r is best else ""
        rows.append(
            f"| {r.name}{mark} | {r.test['ndcg@10']:.4f} | {r.test['recall@10']:.4f} | "
            f"{r.test['recall@20']:.4f} | {r.users} | {minutes} |"
        )
    head = [
        f"### {run.dataset}: {run.users_evaluated:,} of {run.users_total:,} users",
        "",
        "| method | NDCG@10 | Recall@10 | Recall@20 | users | minutes |",
        "|---|---|---|---|---|---|",
    ]
    tail = [""]
    if best is not None and pipe is not None:
        ratio = pipe.test["ndcg@10"] / max(best.test["ndcg@10"], 1e-12)
        tail.append(
            f"Pipeline vs strongest baseline ({best.name}): NDCG@10 {pipe.test['ndcg@10']:.4f} vs "
            f"{best.test['ndcg@10']:.4f} = **{ratio:.2f}×**; shortlist Recall@20 "
            f"{pipe.shortlist_recall or 0:.3f} vs {best.shortlist_recall or 0:.3f}."
        )
        tail.append("")
    return head + rows + tail


def blend_section(data: dict[str, Any]) -> list[str]:
    test = data["targets"]["test"]
    val = data["targets"]["val"]
    sc = data["test_scale_to_all_users"]
    by_w = data["test_ndcg10_by_weight_on_scored"]
    w = data["weight"]
    key = f"{w:g}"
    lines = [
        "## The LLM stage blended with its shortlist (ML-100k)",
        "",
        f"Verbalizer ({data.get('llm') or data['backend']}) scores over the served top 20; blend "
        f"weight fitted on the validation target over 0, 0.05, …, 1: **w = {w:g}** "
        "(0 = the shortlist exactly). Only users whose target is in the top 20 need the model "
        "(the others score 0 in every row).",
        "",
        "| target | users | target in top 20 | scored by the LLM | shortlist s | LLM s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, got in (("validation (fit)", val), ("test (report)", test)):
        lines.append(
            f"| {name} | {got['users']} | {got['hit_users']} | {got['scored']} | "
            f"{got['shortlist_s']} | {got.get('llm_wall_s', got['llm_s'])} | "
            f"{got.get('wall_s', '–')} |"
        )
    full = test["scored"] >= test["hit_users"]
    scope = (
        "all users (exact)"
        if full
        else (
            f"all-user estimate from {test['scored']} of {test['hit_users']} hit users (× {sc:.2f})"
        )
    )
    lines += [
        "",
        f"| test NDCG@10, {scope} | value |",
        "|---|---|",
        f"| shortlist (w = 0) | {by_w['0'] * sc:.4f} |",
        f"| LLM alone (w = 1) | {by_w['1'] * sc:.4f} |",
        f"| blended, fitted w = {w:g} | {by_w.get(key, by_w['0']) * sc:.4f} |",
        "",
        "Validation NDCG@10 by weight (the fit): "
        + ", ".join(f"{k}: {v:.4f}" for k, v in data["val_ndcg10_by_weight"].items())
        + ".",
        "",
        "Test NDCG@10 by weight (on the scored users, unscaled): "
        + ", ".join(f"{k}: {v:.4f}" for k, v in by_w.items())
        + ".",
        "",
        f"Wall {data['wall_s'] / 60:.1f} min; load average at the start "
        f"{data['loadavg_start']}, at the end {data['loadavg_end']}.",
        "",
    ]
    return lines


def combined(runs: Sequence[tuple[RankingRun, str]], blend: dict[str, Any] | None) -> str:
    lines = ["# Ranking: baselines, each stage and the served pipeline (issue 11)", ""]
    lines += ["## Summary", ""]
    for run, _cmd in runs:
        lines += summary_rows(run)
    if blend is not None:
        lines += blend_section(blend)
    for run, cmd in runs:
        body = markdown(run, cmd).splitlines()
        body[0] = "#" + body[0]  # one level down
        lines += ["", *[("#" + x if x.startswith("## ") else x) for x in body]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--blend", type=Path, default=None)
    ap.add_argument("--preface", type=Path, default=None, help="Markdown put after the title")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    runs = []
    for p in args.runs:
        cmd = json.loads(p.read_text(encoding="utf-8")).get("command", "")
        runs.append((load_run(p), cmd))
    blend = json.loads(args.blend.read_text()) if args.blend else None
    text = combined(runs, blend)
    if args.preface is not None:
        head, rest = text.split("\n", 1)
        text = head + "\n\n" + args.preface.read_text().strip() + "\n" + rest
    args.out.write_text(text, encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
