"""`recsmith eval …`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

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
    from eval.datasets import DatasetError, load, load_files
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
) -> None:
    """Summaries of the ComparEdge catalogue: checks pass rate, length, language, ROUGE-L."""
    from eval.copy_eval import run_copy_eval, write_copy_report
    from eval.datasets import DatasetError

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
