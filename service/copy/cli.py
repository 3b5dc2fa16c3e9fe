"""`recsmith copy …`: generate one text, run batch jobs, review and export the store."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from service.cli_support import (
    BAD_INPUT,
    PARTIAL,
    build_application,
    clear_errors,
    console,
    fail,
    out,
    progress_bar,
    validation_message,
)
from service.copy import batch as copy_batch
from service.copy.store import STATUSES, CopyFilter
from service.copy.tasks import CopyOptions, HeadlineRequest
from service.llm.base import LLMError
from service.vocab import ProductTask
from service.worker import check_queue, run_until_signalled

copy_app = typer.Typer(help="Generate, store and export product copy.", no_args_is_help=True)


def _options(**kw: object) -> CopyOptions:
    try:
        return CopyOptions(**{k: v for k, v in kw.items() if v is not None})
    except ValidationError as e:
        raise fail(f"invalid options: {validation_message(e)}") from e


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


Task = Annotated[ProductTask, typer.Option("--task", "-t", help="What to write")]


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
    opts = _options(
        language=language, max_words=max_words, max_chars=max_chars, tone=tone, length=length,
        keywords=keyword or None, variants=variants, seed=seed,
    )  # fmt: skip
    with clear_errors():
        application = build_application()
        try:
            [results] = application.write_copy(task, [product], opts, regenerate=regenerate)
        except LLMError as e:
            raise fail(f"the model failed: {e}", PARTIAL) from e
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
    with clear_errors():
        req = HeadlineRequest(
            product_ids=product, user_id=user, interests=interest or [], language=language,
            threshold=threshold,
        )  # fmt: skip
        res = build_application().headline(req)
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
    opts = _options(language=language, max_words=max_words)
    try:
        if job is not None:
            status = copy_batch.get_job(job)
        else:
            found = None if new else copy_batch.find_job(task, opts, category, limit)
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
                status = copy_batch.create_job(
                    task, opts, category=category, limit=limit, batch_size=batch_size
                )
                console.print(f"job {status.id}: {status.total} products, batches of {batch_size}")
    except (ValueError, copy_batch.JobNotFound) as e:
        raise fail(str(e)) from e
    if status.total == 0:
        console.print("no products match")
        return
    label = f"{task} job {status.id}"
    with progress_bar() as progress:
        bar = progress.add_task(
            f"{label}, {status.failed} failed", total=status.total,
            completed=status.done + status.failed,
        )  # fmt: skip

        def on_batch(s: copy_batch.JobStatus) -> None:
            progress.update(bar, completed=s.done + s.failed,
                            description=f"{label}, {s.failed} failed")  # fmt: skip

        try:
            final = copy_batch.run_job(status.id, on_batch=on_batch, restart=True)  # re-run
        except copy_batch.JobBusy as e:
            raise fail(str(e), PARTIAL) from e
        except Exception as e:
            raise fail(f"job {status.id} failed: {e} (re-run to resume)", PARTIAL) from e
    console.print(
        f"job {final.id} {final.status}: {final.done} done, "
        f"{final.failed} failed, {final.pending} pending"
    )
    if final.status != "done":
        raise typer.Exit(PARTIAL)


@copy_app.command()
def jobs(limit: Annotated[int, typer.Option(help="How many")] = 20) -> None:
    """Recent batch jobs."""
    table = Table("id", "task", "status", "done", "failed", "total", "created")
    for j in build_application().list_copy_jobs(limit):
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
    with clear_errors():
        s = build_application().cancel_copy_job(job_id)
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
    try:
        where = CopyFilter(status=status, task=task, product_id=product)
        rows = build_application().list_copy(where, limit=limit)
    except ValueError as e:
        raise fail(str(e)) from e
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
    with clear_errors():  # an unknown id, or an edit that fails a check: exit 2
        application = build_application()
        if action == "approve":  # an edit is re-checked; one failing a check is refused
            r = application.approve_copy(copy_id, text)
        elif action == "reject":
            r = application.reject_copy(copy_id, reason)
        else:
            r = application.edit_copy(copy_id, text or "")
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
    if fmt not in ("csv", "jsonl"):
        raise fail(f"unknown format {fmt!r}: use csv or jsonl", BAD_INPUT)
    if status and status not in STATUSES:
        raise fail(f"unknown status {status!r}: use one of {', '.join(STATUSES)}", BAD_INPUT)
    fh = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
    n = 0
    try:
        writer = csv.DictWriter(fh, fieldnames=EXPORT_FIELDS) if fmt == "csv" else None
        if writer:
            writer.writeheader()
        where = CopyFilter(status=status, task=task, passed=passed)
        results = build_application().export_copy(where, include_unsafe=include_unsafe)
        for result in results:
            r = result.model_dump(mode="json")
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


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Batches written at once (default RECSMITH_WORKER_CONCURRENCY; 0 there = "
            "one per LLM server of the openai backend, 1 for an in-process model)",
        ),
    ] = None,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds a stopping worker lets batches in flight commit")
    ] = 30.0,
) -> None:
    """Write batch copy from the job queue in the database until stopped (SIGTERM, Ctrl-C);
    start one per host or more. Needs PostgreSQL (RECSMITH_DATABASE_URL)."""
    with clear_errors():
        application = build_application()
        try:
            check_queue(application.settings)
        except ValueError as e:
            raise fail(str(e)) from e

        def started(w) -> None:  # noqa: ANN001 - a Worker
            console.print(f"worker {w.worker_id}: {w.concurrency} batch(es) at a time")

        w = run_until_signalled(
            application.settings,
            application.new_writer,
            concurrency=concurrency,
            grace_s=grace,
            on_start=started,
        )
    console.print(
        f"worker {w.worker_id} stopped: {w.batches} batches, {w.done} done, {w.failed} failed"
    )


if __name__ == "__main__":  # `python -m service.copy.cli …` (the batch kill test uses it)
    copy_app()
