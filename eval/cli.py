"""`recsmith eval …`."""

from __future__ import annotations

import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from service.cli_support import fail, out, progress_bar
from service.offline.datasets import DatasetError, load, load_files
from service.ranking.adapter import AdapterError
from service.retrieval.sequential import SequentialModelError
from service.training.cli import (
    DataDirOpt,
    TieOpt,
    load_dataset_split,
    settings_for,
    train_app,
)

eval_app = typer.Typer(help="Offline evaluation on real data.", no_args_is_help=True)
console = Console(stderr=True)


@eval_app.callback()
def _group() -> None:
    """Offline evaluation on real data (a group even with one command, so `ranking` is a
    subcommand both here and under `recsmith eval`)."""


class RichReporter:
    """eval.ranking.Reporter drawn as one rich progress bar per stage."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: int | None = None

    def stage(self, label: str, total: int | None = None) -> None:
        if self.task is not None:  # the previous stage is over: show it complete
            total = self.progress.tasks[self.task].total or 1
            self.progress.update(self.task, total=total, completed=total)
            self.progress.stop_task(self.task)
        self.task = self.progress.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def note(self, text: str) -> None:
        self.progress.console.print(f"[yellow]{text}[/yellow]")

    def close(self) -> None:
        self.stage("done", 1)
        self.advance()


@eval_app.command("ranking")
def ranking(
    dataset: Annotated[
        str, typer.Option(help="ml-100k | book-crossing (ignored with --items/--interactions)")
    ] = "ml-100k",
    items: Annotated[Path | None, typer.Option(help="products file (CSV, JSONL, Parquet)")] = None,
    interactions: Annotated[Path | None, typer.Option(help="interactions file")] = None,
    users: Annotated[int | None, typer.Option(help="evaluate a seeded sample of N users")] = None,
    rerankers: Annotated[
        str, typer.Option(help="comma-separated LLM rerankers, e.g. verbalizer,reasoning")
    ] = "",
    rerank_users: Annotated[int, typer.Option(help="seeded sample size for rerankers")] = 100,
    tie_break: Annotated[
        str,
        typer.Option(help="order of equal timestamps: item_id (as the notes' figures) | original"),
    ] = "item_id",
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    retrieval: Annotated[bool, typer.Option(help="evaluate recsmith's own retrieval")] = True,
    content: Annotated[bool, typer.Option(help="the MiniLM content baseline")] = True,
    sensitivity: Annotated[
        bool, typer.Option(help="baselines again under the other time tie-break")
    ] = True,
    fit_fusion: Annotated[
        bool, typer.Option(help="fit the source fusion on the validation target first")
    ] = True,
    pipeline_k: Annotated[
        int, typer.Option(min=1, max=100, help="items the `recsmith pipeline` row asks for")
    ] = 50,
    pipeline_rerank: Annotated[
        str,
        typer.Option(help="rerank of the `recsmith pipeline` row: none | verbalizer | reasoning"),
    ] = "none",
    sequential_minutes: Annotated[
        float,
        typer.Option(min=0, help="train SASRec this long and serve it as a source (0: off)"),
    ] = 0.0,
    out: Annotated[Path, typer.Option(help="results folder")] = Path("eval/results"),
    tag: Annotated[str, typer.Option(help="suffix for the result file names")] = "",
) -> None:
    """Ranking quality (Recall/NDCG@5/10/20, MRR) of every method side by side."""
    # lazy: `recsmith` imports this module at start-up; eval.ranking pulls the Application
    # and scipy (+0.25 s, eval/bench_startup.py)
    from eval.ranking import run_ranking
    from eval.report import print_table, write_report

    if tie_break not in ("item_id", "original"):
        raise typer.BadParameter("use item_id or original", param_hint="--tie-break")
    if tag and not tag.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise typer.BadParameter("letters, digits, - _ . only", param_hint="--tag")
    if pipeline_rerank not in ("none", "verbalizer", "reasoning"):
        raise typer.BadParameter(
            "use none, verbalizer or reasoning", param_hint="--pipeline-rerank"
        )
    if (items is None) != (interactions is None):
        raise typer.BadParameter("give both --items and --interactions", param_hint="--items")
    names = [n.strip() for n in rerankers.split(",") if n.strip()]
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        reporter = RichReporter(progress)
        reporter.stage("load data")
        try:
            if items is not None and interactions is not None:
                ds = load_files(items, interactions)
            else:
                ds = load(dataset)
        except DatasetError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
        run = run_ranking(
            ds,
            users=users,
            seed=seed,
            tie_break=tie_break,  # type: ignore[arg-type]
            content=content,
            retrieval=retrieval,
            rerankers=names,
            rerank_users=rerank_users,
            reporter=reporter,
            sensitivity=sensitivity,
            fit_fusion=fit_fusion,
            pipeline_k=pipeline_k,
            pipeline_rerank=pipeline_rerank,
            sequential_minutes=sequential_minutes,
        )
        reporter.close()
    command = "recsmith eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    paths = write_report(run, out, command, tag=tag)
    print_table(run)
    for kind, p in paths.items():
        console.print(f"{kind}: {p}")


@eval_app.command("ranking-report")
def ranking_report(
    result: Annotated[Path, typer.Argument(help="a ranking JSON written by `eval ranking`")],
) -> None:
    """Rewrite the Markdown and the plot of a ranking run from its JSON, and print it."""
    # lazy: `recsmith` imports this module at start-up; eval.report pulls the Application
    # and scipy (+0.22 s, eval/bench_startup.py)
    from eval.report import load_run, print_table, rewrite

    if not result.is_file():
        console.print(f"[red]error:[/red] no such file: {result}")
        raise typer.Exit(2)
    paths = rewrite(result)
    print_table(load_run(result))
    for kind, p in paths.items():
        console.print(f"{kind}: {p}")


if __name__ == "__main__":
    eval_app()


@eval_app.command("copy")
def copy_eval(
    limit: Annotated[int, typer.Option(min=1, max=331, help="products (seeded sample)")] = 40,
    max_words: Annotated[int, typer.Option(min=5, max=200, help="summary word limit")] = 25,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    out: Annotated[Path, typer.Option(help="results folder")] = Path("eval/results"),
    profile: Annotated[
        str, typer.Option(help="writer profiles side by side, e.g. tiny,small (issue 10)")
    ] = "",
    zh: Annotated[
        int, typer.Option(min=0, max=6, help="with --profile: Chinese demo products")
    ] = 6,
) -> None:
    """Summaries of the ComparEdge catalogue: checks pass rate, length, language, ROUGE-L.
    With --profile: per-profile quality, latency and sample texts (copy-profiles report)."""
    # lazy: `recsmith` imports this module at start-up; eval.copy_eval pulls the engine and
    # LangChain (+0.84 s, eval/bench_startup.py)
    from eval.copy_eval import run_copy_eval, run_profiles_report, write_copy_report

    if profile:
        names = [p.strip() for p in profile.split(",") if p.strip()]
        bad = [p for p in names if p not in ("tiny", "small", "base")]
        if bad:
            console.print(f"[red]error:[/red] unknown profile {bad[0]!r}: use tiny, small or base")
            raise typer.Exit(2)
        command = "recsmith eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        paths = run_profiles_report(
            names, out, command, n_comparedge=min(limit, 40), n_chinese=zh,
            progress=lambda s: console.print(s),
        )  # fmt: skip
        console.print(paths[1].read_text())
        return

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task("copy eval", total=limit)
            result = run_copy_eval(
                limit=limit,
                max_words=max_words,
                seed=seed,
                progress=lambda n: progress.advance(task, n),
            )
    except DatasetError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    command = "recsmith eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    paths = write_copy_report(result, out, command)
    console.print(paths[1].read_text())
    for p in paths:
        console.print(f"written: {p}")


@eval_app.command("report")
def report(
    users: Annotated[int | None, typer.Option(help="seeded sample of ML-100k users")] = None,
    rerank_users: Annotated[int, typer.Option(help="users for the LLM rerank rows")] = 30,
    copy_limit: Annotated[int, typer.Option(help="ComparEdge products for the copy eval")] = 40,
    out: Annotated[Path, typer.Option(help="results folder")] = Path("eval/results"),
) -> None:
    """The whole offline report (`make eval`): ranking on ML-100k with the verbalizer
    rerank on a seeded sample, then the copy evaluation."""
    ranking(
        dataset="ml-100k",
        items=None,
        interactions=None,
        users=users,
        rerankers="verbalizer",
        rerank_users=rerank_users,
        tie_break="item_id",
        seed=0,
        retrieval=True,
        content=True,
        sensitivity=False,
        fit_fusion=True,
        pipeline_k=50,
        pipeline_rerank="none",
        sequential_minutes=0.0,
        out=out,
        tag="",
    )
    copy_eval(limit=copy_limit, max_words=25, seed=0, out=out)


# Mounted as `recsmith train evaluate`, beside the training it scores; evaluation code, so it
# lives here (training never imports eval/).
@train_app.command("evaluate")
def evaluate_learned(
    dataset: Annotated[str, typer.Option(help="ml-100k | book-crossing")] = "ml-100k",
    tie_break: TieOpt = "item_id",
    rerank_users: Annotated[int, typer.Option(help="seeded sample for the LLM rerankers")] = 40,
    seed: int = 0,
    tuned: Annotated[bool, typer.Option(help="also the LoRA-tuned verbalizer")] = True,
    data_dir: DataDirOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="results folder")] = Path("eval/results"),
    command: Annotated[
        str, typer.Option(help="the training commands, recorded in the report")
    ] = "",
) -> None:
    """Test-target metrics of the saved models (train them with --dataset first): SASRec on
    every user, its top-20 reranked by the base and the LoRA-tuned verbalizer on a sample.
    Writes <date>-learned-<dataset>.json and .md under --out."""
    # lazy: `recsmith` imports this module at start-up; these pull the Application and scipy
    # (+0.21 s, eval/bench_startup.py)
    from eval.learned import run_learned
    from service.offline.pipeline import Reporter

    settings = settings_for(data_dir)
    ds, split = load_dataset_split(dataset, tie_break)

    with progress_bar() as bar:

        class _Rep(Reporter):
            task: Any = None

            def stage(self, label: str, total: int | None = None) -> None:
                self.task = bar.add_task(label, total=total)

            def advance(self, n: int = 1) -> None:
                if self.task is not None:
                    bar.advance(self.task, n)

        try:
            run = run_learned(ds, split, settings, rerank_users, seed, _Rep(), tuned)
        except (SequentialModelError, AdapterError) as e:
            raise fail(str(e)) from None
    run["command"] = "recsmith train " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    run["training_commands"] = [c for c in command.split(";") if c.strip()]
    run["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{datetime.now(UTC):%Y-%m-%d}-learned-{dataset}"
    stem.with_suffix(".json").write_text(json.dumps(run, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_learned_markdown(run))
    out.print(_learned_markdown(run), markup=False, soft_wrap=True)
    console.print(f"wrote {stem}.json and {stem}.md")


def _learned_markdown(run: dict[str, Any]) -> str:
    lines = [
        f"# Learned ranking on {run['dataset']}",
        "",
        f"Test target (last item), full ranking over unseen items, time ties by "
        f"{run['tie_break']}. {run['stats']['users']} users, {run['stats']['products']} items.",
        "",
        "| method | users | Recall@10 | NDCG@10 | Recall@20 | NDCG@20 | MRR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in run["results"]:
        t = r["test"]
        lines.append(
            f"| {r['name']} | {r['users']} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} | "
            f"{t['recall@20']:.4f} | {t['ndcg@20']:.4f} | {t['mrr']:.4f} |"
        )
    st = run["sasrec_training"]
    lines += [
        "",
        "## Training",
        "",
        f"- SASRec: best epoch {st.get('best_epoch')} of {st.get('epochs_run')} "
        f"(stopped: {st.get('stopped')}), {st.get('train_s')} s wall, "
        f"{st.get('train_cpu_s')} s CPU, {st.get('threads')} thread(s); "
        f"validation NDCG@10 {st.get('val', {}).get('ndcg@10', float('nan')):.4f}.",
    ]
    lt = run.get("lora_training")
    if lt:
        vb, va = lt.get("val_before") or {}, lt.get("val_after") or {}
        lines.append(
            f"- LoRA: {lt.get('examples')} prompts, {lt.get('steps')}/{lt.get('total_steps')} "
            f"steps, {lt.get('train_s')} s on {lt.get('device')}; on {lt.get('val_examples')} "
            f"validation prompts (ground truth among the 20): accuracy "
            f"{vb.get('accuracy', float('nan')):.3f} → {va.get('accuracy', float('nan')):.3f}, "
            f"NDCG@10 {vb.get('ndcg@10', float('nan')):.4f} → "
            f"{va.get('ndcg@10', float('nan')):.4f}."
        )
    for r in run["results"]:
        if r.get("note"):
            lines.append(f"- {r['name']}: {r['note']}")
    lines += ["", "## Commands", "", "```"]
    lines += [c.strip() for c in run.get("training_commands", [])] + [run["command"], "```", ""]
    return "\n".join(lines)
