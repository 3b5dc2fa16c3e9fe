"""/v1/copy: write product copy, run batch jobs, review (approve / reject / edit), export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse

from service.api.deps import V1, App
from service.api.errors import error_responses
from service.api.protocol import (
    MAX_PAGE,
    CopyApprove,
    CopyEdit,
    CopyGenerate,
    CopyGenerated,
    CopyJob,
    CopyJobCreate,
    CopyOut,
    CopyPage,
    CopyQuery,
    CopyReject,
    CopyStatus,
    HeadlineGenerate,
    HeadlineWritten,
)
from service.copy.store import CopyFilter
from service.copy.tasks import CopyOptions, ProductTask
from service.vocab import CopyTask

router = APIRouter(prefix=f"{V1}/copy", tags=["copy"])

CopyId = Annotated[int, Path(ge=1, le=2**62, description="Copy id")]
JobId = Annotated[int, Path(ge=1, le=2**62, description="Job id")]

# The columns of an export (the edited text, where there is one, is `text`).
EXPORT_FIELDS = [
    "id", "task", "product_id", "product_ids", "language", "variant", "text", "status",
    "passed", "failed_checks", "model_id", "template", "template_version", "created_at",
]  # fmt: skip


def spreadsheet_safe(value: Any) -> Any:
    """Model-written text must not become a spreadsheet formula (CSV injection): a cell
    that starts like one is prefixed with a quote, as OWASP advises."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _export_row(r: Any) -> dict[str, Any]:
    d = r.model_dump(mode="json")
    return {k: d[k] for k in EXPORT_FIELDS}


# -- jobs (declared before /{task} so "jobs" is not read as a task) -------------------------
@router.post(
    "/jobs",
    status_code=202,
    summary="Start a batch copy job",
    description="Snapshots the products (a category, or all; at most `limit`) and writes "
    "their copy in batches on the server's job runner. Poll the job for progress. The same "
    "request while its job is queued or running returns that job (200) instead of a new one; "
    "at most `RECSMITH_COPY_MAX_ACTIVE_JOBS` jobs are queued or running at once (429 beyond).",
    responses={
        200: {"description": "The identical job already queued or running"},
        **error_responses(400, 429, 503),
    },
)
def start_job(body: CopyJobCreate, app: App, response: Response) -> CopyJob:
    options = CopyOptions(**body.model_dump(exclude={"task", "category", "limit", "batch_size"}))
    started = app.start_copy_job(body.task, options, category=body.category, limit=body.limit,
                                 batch_size=body.batch_size)  # fmt: skip
    if started.reused:
        response.status_code = 200
    response.headers["Location"] = f"{V1}/copy/jobs/{started.job.id}"
    return CopyJob.from_domain(started.job, queued=started.queued)


@router.get("/jobs", summary="Recent batch copy jobs, newest first")
def list_copy_jobs(app: App, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20) -> list[CopyJob]:
    return [CopyJob.from_domain(s) for s in app.list_copy_jobs(limit)]


@router.get(
    "/jobs/{job_id}", summary="A batch job's status and progress", responses=error_responses(404)
)
def get_copy_job(job_id: JobId, app: App) -> CopyJob:
    return CopyJob.from_domain(app.get_copy_job(job_id))


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a batch job (it stops after the batch in flight)",
    responses=error_responses(404),
)
def cancel_copy_job(job_id: JobId, app: App) -> CopyJob:
    return CopyJob.from_domain(app.cancel_copy_job(job_id))


# -- reading and export ---------------------------------------------------------------------
@router.get("", summary="Stored copy, newest first, with filters")
def list_copy(app: App, q: Annotated[CopyQuery, Query()]) -> CopyPage:
    items = app.list_copy(q.where(), limit=q.limit + 1, offset=q.offset)
    more = len(items) > q.limit
    return CopyPage(
        items=[CopyOut.of(r) for r in items[: q.limit]],
        limit=q.limit,
        offset=q.offset,
        next_offset=q.offset + q.limit if more else None,
    )


@router.get(
    "/export",
    summary="Download stored copy as CSV or JSON Lines",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file",
            "content": {"text/csv": {}, "application/x-ndjson": {}},
        },
    },
)
def export_copy(
    app: App,
    format: Literal["csv", "jsonl"] = "jsonl",  # noqa: A002 - the query parameter's name
    status: CopyStatus | None = None,
    task: CopyTask | None = None,
    passed: Annotated[
        bool | None, Query(description="Only texts that passed (true) or failed (false) checks")
    ] = None,
    include_unsafe: Annotated[
        bool,
        Query(
            description="Also texts that repeat an instruction planted in the product data "
            "(left out by default; marked by `injection` in failed_checks)"
        ),
    ] = False,
) -> StreamingResponse:
    where = CopyFilter(status=status, task=task, passed=passed)
    results = app.export_copy(where, include_unsafe=include_unsafe)
    rows = (_export_row(r) for r in results)
    name = f"recsmith-copy{'-' + status if status else ''}{'-' + task if task else ''}"

    def csv_lines() -> Iterator[str]:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS)
        w.writeheader()
        for rec in rows:
            rec["product_ids"] = "|".join(rec["product_ids"])
            rec["failed_checks"] = "|".join(rec["failed_checks"])
            w.writerow({k: spreadsheet_safe(v) for k, v in rec.items()})
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
        yield buf.getvalue()

    def jsonl_lines() -> Iterator[str]:
        for rec in rows:
            yield json.dumps(rec, ensure_ascii=False) + "\n"

    if format == "csv":
        body, media, ext = csv_lines(), "text/csv; charset=utf-8", "csv"
    else:
        body, media, ext = jsonl_lines(), "application/x-ndjson; charset=utf-8", "jsonl"
    return StreamingResponse(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}.{ext}"'},
    )


# -- writing --------------------------------------------------------------------------------
@router.post(
    "/headline",
    summary="Write a theme headline for a set of products, with per-item fit scores",
    responses=error_responses(400, 404, 503),
)
def write_headline(body: HeadlineGenerate, app: App) -> HeadlineWritten:
    return HeadlineWritten.of(app.headline(body))


@router.post(
    "/{task}",
    summary="Write a summary, title or blurb for products",
    description="Stored texts for the same request, model and prompt version are returned "
    "without a model call (`cached: true`) unless `regenerate` is set. Every text is "
    "checked (numbers, names, banned claims, length, language); a failed text is flagged "
    "with `failed_checks`.",
    responses=error_responses(400, 404, 503),
)
def generate_copy(
    task: Annotated[ProductTask, Path(description="summary | title | blurb")],
    body: CopyGenerate,
    app: App,
) -> CopyGenerated:
    options = CopyOptions(**body.model_dump(exclude={"product_ids", "regenerate"}))
    per_product = app.write_copy(task, body.product_ids, options, regenerate=body.regenerate)
    return CopyGenerated(task=task, results=[CopyOut.of(r) for per in per_product for r in per])


# -- one text -------------------------------------------------------------------------------
@router.get("/{copy_id}", summary="One stored text", responses=error_responses(404))
def get_copy(copy_id: CopyId, app: App) -> CopyOut:
    return CopyOut.of(app.get_copy(copy_id))


@router.post(
    "/{copy_id}/approve",
    summary="Approve a text (optionally with an edit)",
    description="An edited text is checked like the model's; one that fails a check is "
    "refused with 422 naming the checks, and nothing is stored (save it with PATCH to keep "
    "it as a flagged draft).",
    responses=error_responses(400, 404),
)
def approve_copy(copy_id: CopyId, app: App, body: CopyApprove | None = None) -> CopyOut:
    return CopyOut.of(app.approve_copy(copy_id, body.text if body else None))


@router.post(
    "/{copy_id}/reject",
    summary="Reject a text (it is not served again; the next identical request writes anew)",
    responses=error_responses(400, 404),
)
def reject_copy(copy_id: CopyId, app: App, body: CopyReject | None = None) -> CopyOut:
    return CopyOut.of(app.reject_copy(copy_id, body.reason if body else ""))


@router.patch(
    "/{copy_id}",
    summary="Replace a text by a person's edit (re-checked; back to draft)",
    responses=error_responses(400, 404),
)
def edit_copy(copy_id: CopyId, body: CopyEdit, app: App) -> CopyOut:
    return CopyOut.of(app.edit_copy(copy_id, body.text))
