"""/v1/copy: write product copy, run batch jobs, review (approve / reject / edit), export."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from service.api.deps import RS, V1
from service.api.errors import ApiError, error_responses
from service.api.jobs import JobRunner
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
    CopyReject,
    HeadlineGenerate,
    HeadlineWritten,
)
from service.copy.tasks import CopyOptions, JobStatus, ProductTask
from service.recsmith import Recsmith

router = APIRouter(prefix=f"{V1}/copy", tags=["copy"])
_lock = threading.Lock()

CopyId = Annotated[int, Path(ge=1, le=2**62, description="Copy id")]
JobId = Annotated[int, Path(ge=1, le=2**62, description="Job id")]
Status = Literal["draft", "approved", "rejected"]

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


def writer_for(request: Request, rs: Recsmith) -> Any:
    """One CopyWriter per app, sharing the catalogue store (and the cached LLM/encoder)."""
    w = getattr(request.app.state, "copy_writer", None)
    if w is None:
        with _lock:
            w = getattr(request.app.state, "copy_writer", None)
            if w is None:
                from service.copy.writer import CopyWriter

                w = CopyWriter(rs.settings, catalog=rs.store)
                request.app.state.copy_writer = w
    return w


def runner_for(request: Request, rs: Recsmith) -> JobRunner:
    r = getattr(request.app.state, "copy_jobs", None)
    return r if r is not None else make_runner(request.app)


def make_runner(app: Any) -> JobRunner:
    """The app's one job runner (made once), writing with the app's catalogue store."""
    with _lock:
        r = getattr(app.state, "copy_jobs", None)
        if r is None:
            from service.copy.writer import CopyWriter

            rs: Recsmith = app.state.recsmith
            r = JobRunner(rs.settings, lambda: CopyWriter(rs.settings, catalog=rs.store))
            app.state.copy_jobs = r
    return r


def _job(s: JobStatus, queued: bool = False) -> CopyJob:
    progress = (s.done + s.failed) / s.total if s.total else 1.0
    return CopyJob(**s.model_dump(), progress=round(progress, 4), queued=queued)


def _missing_products(rs: Recsmith, ids: list[str]) -> None:
    found = rs.store.get_products(ids)
    missing = [(n, p) for n, p in enumerate(ids) if p not in found]
    if missing:
        raise ApiError(
            404,
            f"unknown product id(s): {', '.join(p for _, p in missing[:5])}",
            fields=[(f"product_ids[{n}]", "unknown product id") for n, _ in missing[:20]],
        )


# -- jobs (declared before /{task} so "jobs" is not read as a task) -------------------------
@router.post(
    "/jobs",
    status_code=202,
    response_model=CopyJob,
    summary="Start a batch copy job",
    description="Snapshots the products (a category, or all; at most `limit`) and writes "
    "their copy in batches on the server's job runner. Poll the job for progress. The same "
    "request while its job is queued or running returns that job (200) instead of a new one; "
    "at most `RECSMITH_COPY_MAX_ACTIVE_JOBS` jobs are queued or running at once (429 beyond).",
    responses={
        200: {"description": "The identical job already queued or running"},
        **error_responses(400, 401, 413, 422, 429, 503),
    },
)
def start_job(body: CopyJobCreate, rs: RS, request: Request, response: Response) -> CopyJob:
    from service.copy.batch import TooManyJobs, submit_job

    options = CopyOptions(**body.model_dump(exclude={"task", "category", "limit", "batch_size"}))
    try:
        status, reused = submit_job(
            body.task,
            options,
            category=body.category,
            limit=body.limit,
            batch_size=body.batch_size,
            settings=rs.settings,
        )
    except TooManyJobs as e:
        raise ApiError(429, str(e), headers={"Retry-After": "60"}) from None
    if reused:
        response.status_code = 200
    elif status.status == "running":
        runner_for(request, rs).submit(status.id)
    response.headers["Location"] = f"{V1}/copy/jobs/{status.id}"
    return _job(status, queued=status.status == "running" and not reused)


@router.get(
    "/jobs",
    response_model=list[CopyJob],
    summary="Recent batch copy jobs, newest first",
    responses=error_responses(401, 422),
)
def list_copy_jobs(rs: RS, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20) -> list[CopyJob]:
    from service.copy.batch import list_jobs

    return [_job(s) for s in list_jobs(limit=limit, settings=rs.settings)]


@router.get(
    "/jobs/{job_id}",
    response_model=CopyJob,
    summary="A batch job's status and progress",
    responses=error_responses(401, 404, 422),
)
def get_copy_job(job_id: JobId, rs: RS) -> CopyJob:
    from service.copy.batch import JobNotFound, get_job

    try:
        return _job(get_job(job_id, settings=rs.settings))
    except JobNotFound as e:
        raise ApiError(404, str(e), fields=[("job_id", "unknown job")]) from None


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=CopyJob,
    summary="Cancel a batch job (it stops after the batch in flight)",
    responses=error_responses(401, 404, 422),
)
def cancel_copy_job(job_id: JobId, rs: RS) -> CopyJob:
    from service.copy.batch import JobNotFound, cancel_job

    try:
        return _job(cancel_job(job_id, settings=rs.settings))
    except JobNotFound as e:
        raise ApiError(404, str(e), fields=[("job_id", "unknown job")]) from None


# -- reading and export ---------------------------------------------------------------------
@router.get(
    "",
    response_model=CopyPage,
    summary="Stored copy, newest first, with filters",
    responses=error_responses(401, 422),
)
def list_copy(
    rs: RS,
    status: Status | None = None,
    task: Literal["summary", "title", "blurb", "headline"] | None = None,
    product_id: Annotated[str | None, Query(max_length=128)] = None,
    language: Literal["en", "zh"] | None = None,
    job_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    passed: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> CopyPage:
    from service.copy.store import CopyStore

    items = CopyStore(rs.store.engine).list(
        status=status,
        task=task,
        product_id=product_id,
        language=language,
        job_id=job_id,
        passed=passed,
        limit=limit + 1,
        offset=offset,
    )
    more = len(items) > limit
    return CopyPage(
        items=[CopyOut.of(r) for r in items[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if more else None,
    )


def _export_rows(
    rs: Recsmith, status: str | None, task: str | None, passed: bool | None, include_unsafe: bool
) -> Iterator[dict[str, Any]]:
    from service.copy.store import CopyStore, is_unsafe, to_result

    for row in CopyStore(rs.store.engine).iter_all(status=status, task=task, passed=passed):
        if is_unsafe(row) and not include_unsafe:
            continue  # it repeats an instruction planted in the product data
        r = to_result(row).model_dump(mode="json")
        yield {k: r[k] for k in EXPORT_FIELDS}


@router.get(
    "/export",
    summary="Download stored copy as CSV or JSON Lines",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file",
            "content": {"text/csv": {}, "application/x-ndjson": {}},
        },
        **error_responses(401, 422),
    },
)
def export_copy(
    rs: RS,
    format: Literal["csv", "jsonl"] = "jsonl",  # noqa: A002 - the query parameter's name
    status: Status | None = None,
    task: Literal["summary", "title", "blurb", "headline"] | None = None,
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
    rows = _export_rows(rs, status, task, passed, include_unsafe)
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
    response_model=HeadlineWritten,
    summary="Write a theme headline for a set of products, with per-item fit scores",
    responses=error_responses(400, 401, 404, 413, 422, 503),
)
def write_headline(body: HeadlineGenerate, rs: RS, request: Request) -> HeadlineWritten:
    _missing_products(rs, body.product_ids)
    if body.user_id and not body.interests and not rs.store.has_user(body.user_id):
        raise ApiError(404, f"unknown user id {body.user_id!r}", fields=[("user_id", "unknown")])
    return HeadlineWritten.of(writer_for(request, rs).headline(body))


@router.post(
    "/{task}",
    response_model=CopyGenerated,
    summary="Write a summary, title or blurb for products",
    description="Stored texts for the same request, model and prompt version are returned "
    "without a model call (`cached: true`) unless `regenerate` is set. Every text is "
    "checked (numbers, names, banned claims, length, language); a failed text is flagged "
    "with `failed_checks`.",
    responses=error_responses(400, 401, 404, 413, 422, 503),
)
def generate_copy(
    task: Annotated[ProductTask, Path(description="summary | title | blurb")],
    body: CopyGenerate,
    rs: RS,
    request: Request,
) -> CopyGenerated:
    ids = list(dict.fromkeys(body.product_ids))
    _missing_products(rs, ids)
    products = rs.store.get_products(ids)
    options = CopyOptions(**body.model_dump(exclude={"product_ids", "regenerate"}))
    per_product = writer_for(request, rs).generate_for_products(
        task, [products[i] for i in ids], options, regenerate=body.regenerate
    )
    return CopyGenerated(task=task, results=[CopyOut.of(r) for per in per_product for r in per])


# -- one text -------------------------------------------------------------------------------
def _copy_store(rs: Recsmith) -> Any:
    from service.copy.store import CopyStore

    return CopyStore(rs.store.engine)


def _not_found(e: Exception) -> ApiError:
    return ApiError(404, str(e), fields=[("copy_id", "unknown copy id")])


@router.get(
    "/{copy_id}",
    response_model=CopyOut,
    summary="One stored text",
    responses=error_responses(401, 404, 422),
)
def get_copy(copy_id: CopyId, rs: RS) -> CopyOut:
    from service.copy.store import CopyNotFound, to_result

    try:
        return CopyOut.of(to_result(_copy_store(rs).get(copy_id)))
    except CopyNotFound as e:
        raise _not_found(e) from None


@router.post(
    "/{copy_id}/approve",
    response_model=CopyOut,
    summary="Approve a text (optionally with an edit)",
    description="An edited text is checked like the model's; one that fails a check is "
    "refused with 422 naming the checks, and nothing is stored (save it with PATCH to keep "
    "it as a flagged draft).",
    responses=error_responses(400, 401, 404, 422),
)
def approve_copy(
    copy_id: CopyId, rs: RS, request: Request, body: CopyApprove | None = None
) -> CopyOut:
    from service.copy.store import CopyCheckFailed, CopyNotFound

    text = body.text.strip() if body and body.text and body.text.strip() else None
    try:
        return CopyOut.of(writer_for(request, rs).approve(copy_id, text))
    except CopyNotFound as e:
        raise _not_found(e) from None
    except CopyCheckFailed as e:
        fields = [("text", f"{n}: {c.get('detail') or 'failed'}") for n, c in e.failed.items()]
        raise ApiError(422, str(e), fields=fields) from None


@router.post(
    "/{copy_id}/reject",
    response_model=CopyOut,
    summary="Reject a text (it is not served again; the next identical request writes anew)",
    responses=error_responses(400, 401, 404, 422),
)
def reject_copy(copy_id: CopyId, rs: RS, body: CopyReject | None = None) -> CopyOut:
    from service.copy.store import CopyNotFound

    try:
        return CopyOut.of(_copy_store(rs).reject(copy_id, body.reason if body else ""))
    except CopyNotFound as e:
        raise _not_found(e) from None


@router.patch(
    "/{copy_id}",
    response_model=CopyOut,
    summary="Replace a text by a person's edit (re-checked; back to draft)",
    responses=error_responses(400, 401, 404, 413, 422),
)
def edit_copy(copy_id: CopyId, body: CopyEdit, rs: RS, request: Request) -> CopyOut:
    from service.copy.store import CopyNotFound

    try:
        return CopyOut.of(writer_for(request, rs).edit(copy_id, body.text))
    except CopyNotFound as e:
        raise _not_found(e) from None
    except ValueError as e:
        raise ApiError(422, str(e), fields=[("text", str(e))]) from None
