"""`recsmith copy …`: generate one text, run batch jobs, review and export the store."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

copy_app = typer.Typer(help="Generate, store and export product copy.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def _options(**kw: object):  # noqa: ANN202 - CopyOptions, imported lazily (fast --help)
    from pydantic import ValidationError

    from service.copy.tasks import CopyOptions

    try:
        return CopyOptions(**{k: v for k, v in kw.items() if v is not None})
    except ValidationError as e:
        raise _fail(f"invalid options: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}", 2) from e


def _show(result, as_json: bool) -> None:  # noqa: ANN001 - CopyResult
    if as_json:
        out.print_json(result.model_dump_json())
        return
    flag = (
        "[green]passed[/]"
        if result.passed
        else f"[yellow]failed: {', '.join(result.failed_checks)}[/]"
    )
    where = "store" if result.cached else f"model, {result.attempts} attempt(s)"
    console.print(
        f"[dim]#{result.id} {result.task} {result.language} v{result.variant} ({where})[/] {flag}"
    )
    if result.refused:
        console.print(f"[red]refused[/]: {result.note}")
    else:
        out.print(result.text)
        if not result.passed:
            console.print(f"[yellow]{result.note}[/]")


Task = Annotated[str, typer.Option("--task", "-t", help="summary | title | blurb")]


@copy_app.command()
def generate(
    task: Task,
    product: Annotated[str, typer.Option("--product", "-p", help="Product id")],
    language: Annotated[str | None, typer.Option(help="en | zh (default: the product's)")] = None,
    max_words: Annotated[int | None, typer.Option(help="Word limit (English)")] = None,
    max_chars: Annotated[int | None, typer.Option(help="Character limit (Chinese)")] = None,
    tone: Annotated[str | None, typer.Option(help="Blurb tone")] = None,
    length: Annotated[str | None, typer.Option(help="Blurb length: short | medium | long")] = None,
    keyword: Annotated[
        list[str] | None, typer.Option("--keyword", "-k", help="Blurb keyword (repeat)")
    ] = None,
    variants: Annotated[int, typer.Option(help="How many variants (sampled)")] = 1,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    regenerate: Annotated[bool, typer.Option(help="Ignore a stored text")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Write copy for one product (served from the store when already written)."""
    from service.catalog.store import NotFound
    from service.copy.tasks import CopyRequest
    from service.copy.writer import CopyWriter
    from service.llm.base import LLMError

    opts = _options(
        language=language, max_words=max_words, max_chars=max_chars, tone=tone, length=length,
        keywords=keyword or None, variants=variants, seed=seed,
    )  # fmt: skip
    if task not in ("summary", "title", "blurb"):
        raise _fail(f"unknown task {task!r}: use summary, title or blurb", 2)
    req = CopyRequest(task=task, product_id=product, regenerate=regenerate, **opts.model_dump())  # type: ignore[arg-type]
    try:
        results = CopyWriter().generate(req)
    except NotFound as e:
        raise _fail(str(e)) from e
    except LLMError as e:
        raise _fail(f"the model failed: {e}") from e
    for r in results:
        _show(r, as_json)
    if all(r.refused for r in results):
        raise typer.Exit(3)


@copy_app.command()
def headline(
    product: Annotated[list[str], typer.Option("--product", "-p", help="Product id (repeat)")],
    user: Annotated[
        str | None, typer.Option(help="User id: personalise with their history")
    ] = None,
    interest: Annotated[list[str] | None, typer.Option(help="An interest (repeat)")] = None,
    language: Annotated[str | None, typer.Option(help="en | zh")] = None,
    threshold: Annotated[float, typer.Option(help="Drop items whose fit is below this")] = 0.2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """A theme headline for a set of items, with each item's fit."""
    from pydantic import ValidationError

    from service.catalog.store import NotFound
    from service.copy.tasks import HeadlineRequest
    from service.copy.writer import CopyWriter

    try:
        req = HeadlineRequest(
            product_ids=product, user_id=user, interests=interest or [], language=language,
            threshold=threshold,
        )  # fmt: skip
    except ValidationError as e:
        raise _fail(str(e), 2) from e
    try:
        res = CopyWriter().headline(req)
    except NotFound as e:
        raise _fail(str(e)) from e
    if as_json:
        out.print_json(res.model_dump_json())
        return
    _show(res.headline, False)
    for item in res.items:
        mark = "[green]keep[/]" if item.keep else "[red]drop[/]"
        out.print(f"  {item.product_id:<20} {item.score:6.3f} {mark}")


@copy_app.command()
def batch(
    task: Task,
    category: Annotated[str | None, typer.Option(help="Only this category")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many products")] = None,
    batch_size: Annotated[int, typer.Option(help="Products per generate call")] = 8,
    language: Annotated[str | None, typer.Option(help="en | zh (default: each product's)")] = None,
    max_words: Annotated[int | None, typer.Option(help="Word limit (English)")] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new job even if one matches")] = False,
    job: Annotated[int | None, typer.Option("--job", help="Resume this job id")] = None,
) -> None:
    """Write copy for many products. Re-running the same command resumes its job."""
    from service.copy import batch as jobs

    opts = _options(language=language, max_words=max_words)
    try:
        if job is not None:
            status = jobs.get_job(job)
        else:
            found = None if new else jobs.find_job(task, opts, category, limit)
            if found and found.status == "done":
                console.print(
                    f"job {found.id} already did this ({found.done} done, "
                    f"{found.failed} failed); --new to redo"
                )
                return
            if found:
                console.print(
                    f"resuming job {found.id}: "
                    f"{found.total - found.pending}/{found.total} already processed"
                )
                status = found
            else:
                status = jobs.create_job(
                    task, opts, category=category, limit=limit, batch_size=batch_size
                )
                console.print(f"job {status.id}: {status.total} products, batches of {batch_size}")
    except (ValueError, jobs.JobNotFound) as e:
        raise _fail(str(e), 2) from e
    if status.total == 0:
        console.print("no products match")
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(
            f"{task} job {status.id}", total=status.total,
            completed=status.done + status.failed, failed=status.failed,
        )  # fmt: skip

        def on_batch(s: jobs.JobStatus) -> None:
            progress.update(bar, completed=s.done + s.failed, failed=s.failed)

        try:
            final = jobs.run_job(status.id, on_batch=on_batch, restart=True)  # re-run
        except jobs.JobBusy as e:
            raise _fail(str(e)) from e
        except Exception as e:
            raise _fail(f"job {status.id} failed: {e} (re-run to resume)") from e
    console.print(
        f"job {final.id} {final.status}: {final.done} done, "
        f"{final.failed} failed, {final.pending} pending"
    )
    if final.status != "done":
        raise typer.Exit(1)


@copy_app.command()
def jobs(limit: Annotated[int, typer.Option(help="How many")] = 20) -> None:
    """Recent batch jobs."""
    from service.copy.batch import list_jobs

    table = Table("id", "task", "status", "done", "failed", "total", "created")
    for j in list_jobs(limit=limit):
        table.add_row(
            str(j.id),
            j.task,
            j.status,
            str(j.done),
            str(j.failed),
            str(j.total),
            f"{j.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@copy_app.command()
def cancel(job_id: Annotated[int, typer.Argument(help="Job id")]) -> None:
    """Ask a running job to stop after its current batch."""
    from service.copy.batch import JobNotFound, cancel_job

    try:
        s = cancel_job(job_id)
    except JobNotFound as e:
        raise _fail(str(e)) from e
    console.print(
        f"job {s.id}: {s.status}{' (stopping after this batch)' if s.status == 'running' else ''}"
    )


@copy_app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="draft | approved | rejected")] = None,
    task: Annotated[str | None, typer.Option(help="Task")] = None,
    product: Annotated[str | None, typer.Option(help="Product id")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 20,
) -> None:
    """Stored texts, newest first."""
    from service.config import get_settings
    from service.copy.store import CopyStore

    try:
        rows = CopyStore(get_settings().db_url).list(
            status=status, task=task, product_id=product, limit=limit
        )
    except ValueError as e:
        raise _fail(str(e), 2) from e
    table = Table("id", "task", "product", "lang", "status", "checks", "text")
    for r in rows:
        checks = "ok" if r.passed else ",".join(r.failed_checks)
        table.add_row(
            str(r.id),
            r.task,
            r.product_id or ",".join(r.product_ids),
            r.language,
            r.status,
            checks,
            (r.text or "")[:80],
        )
    out.print(table)


def _review(action: str, copy_id: int, text: str | None = None, reason: str = "") -> None:
    from service.config import get_settings
    from service.copy.store import CopyNotFound, CopyStore
    from service.copy.writer import CopyWriter

    try:
        if action == "approve":  # an edit is re-checked; one failing a check is refused
            r = CopyWriter().approve(copy_id, text)
        elif action == "reject":
            r = CopyStore(get_settings().db_url).reject(copy_id, reason)
        else:
            r = CopyWriter().edit(copy_id, text or "")
    except (CopyNotFound, ValueError) as e:
        raise _fail(str(e)) from e
    console.print(f"#{r.id} {r.status}")


@copy_app.command()
def approve(
    copy_id: Annotated[int, typer.Argument(help="Copy id")],
    text: Annotated[str | None, typer.Option(help="Approve this edited text instead")] = None,
) -> None:
    """Approve a text (optionally with an edit)."""
    _review("approve", copy_id, text)


@copy_app.command()
def reject(
    copy_id: Annotated[int, typer.Argument(help="Copy id")],
    reason: Annotated[str, typer.Option(help="Why")] = "",
) -> None:
    """Reject a text: it is not served again; the next identical request writes anew."""
    _review("reject", copy_id, reason=reason)


@copy_app.command()
def edit(
    copy_id: Annotated[int, typer.Argument(help="Copy id")],
    text: Annotated[str, typer.Option(help="The edited text")],
) -> None:
    """Replace a text by a person's edit (re-checked; back to draft)."""
    _review("edit", copy_id, text)


EXPORT_FIELDS = [
    "id", "task", "product_id", "product_ids", "language", "variant", "text", "status",
    "passed", "failed_checks", "model_id", "template", "template_version", "created_at",
]  # fmt: skip


@copy_app.command()
def export(
    fmt: Annotated[str, typer.Option("--format", "-f", help="csv | jsonl")] = "jsonl",
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. approved")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (default stdout)")
    ] = None,
    passed: Annotated[
        bool | None,
        typer.Option("--passed/--failed", help="Only texts that passed (or failed) every check"),
    ] = None,
    include_unsafe: Annotated[
        bool,
        typer.Option(
            "--include-unsafe",
            help="Also texts that repeat an instruction planted in the product data "
            "(marked by failed_checks=injection)",
        ),
    ] = False,
) -> None:
    """Export stored texts (the edited text where there is one)."""
    from service.config import get_settings
    from service.copy.store import STATUSES, CopyStore, is_unsafe, to_result

    if fmt not in ("csv", "jsonl"):
        raise _fail(f"unknown format {fmt!r}: use csv or jsonl", 2)
    if status and status not in STATUSES:
        raise _fail(f"unknown status {status!r}: use one of {', '.join(STATUSES)}", 2)
    fh = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    n = 0
    try:
        writer = csv.DictWriter(fh, fieldnames=EXPORT_FIELDS) if fmt == "csv" else None
        if writer:
            writer.writeheader()
        rows = CopyStore(get_settings().db_url).iter_all(status=status, task=task, passed=passed)
        for row in rows:
            if is_unsafe(row) and not include_unsafe:
                continue
            r = to_result(row).model_dump(mode="json")
            rec = {k: r[k] for k in EXPORT_FIELDS}
            if writer:
                rec["product_ids"] = "|".join(rec["product_ids"])
                rec["failed_checks"] = "|".join(rec["failed_checks"])
                writer.writerow(rec)
            else:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    finally:
        if output:
            fh.close()
    console.print(f"exported {n} texts" + (f" to {output}" if output else ""))


if __name__ == "__main__":  # `python -m service.copy.cli …` (the batch kill test uses it)
    copy_app()
