"""Batch copy jobs: one task over many products, resumable and cancellable.

A job snapshots its product ids as items (pending) when created. The runner takes the
next `batch_size` pending items, writes their copy in ONE `generate` call (plus one per
retry round), and commits the new texts, the items' new status and the job's counters in
ONE transaction. A runner killed at any point therefore loses at most the batch in
flight, and nothing is done twice: a re-run picks up the pending items (and a text that
was committed is found in the store by its request key, not regenerated).

Cancelling sets a flag the runner reads before each batch (so the API can cancel a job
another process runs); a job with no live runner is cancelled at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, func, select, update

from service.catalog.store import CatalogStore
from service.config import Settings, get_settings
from service.copy.store import canonical_json
from service.copy.tables import CopyJobItemRow, CopyJobRow
from service.copy.tasks import CopyOptions, JobStatus
from service.copy.writer import CopyWriter
from service.db import get_engine, session_scope

logger = logging.getLogger(__name__)
PRODUCT_TASKS = ("summary", "title", "blurb")


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class JobBusy(RuntimeError):
    """Another live process is running this job."""


def _engine(settings: Settings | None) -> Engine:
    return get_engine((settings or get_settings()).db_url)


def _status(row: CopyJobRow) -> JobStatus:
    return JobStatus(
        id=row.id,
        task=row.task,
        params=dict(row.params or {}),
        category=row.category,
        max_products=row.max_products,
        batch_size=row.batch_size,
        total=row.total,
        done=row.done,
        failed=row.failed,
        pending=max(row.total - row.done - row.failed, 0),
        status=row.status,  # type: ignore[arg-type]
        cancel_requested=row.cancel_requested,
        error=row.error or "",
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def job_signature(task: str, options: CopyOptions, category: str | None, limit: int | None) -> str:
    payload = {
        "task": task,
        "options": options.model_dump(),
        "category": (category or "").lower(),
        "limit": limit,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def find_job(
    task: str,
    options: CopyOptions,
    category: str | None = None,
    limit: int | None = None,
    *,
    settings: Settings | None = None,
) -> JobStatus | None:
    """The newest job with the same task, options and selection, if any."""
    sig = job_signature(task, options, category, limit)
    with session_scope(_engine(settings)) as s:
        row = s.scalars(
            select(CopyJobRow).where(CopyJobRow.signature == sig).order_by(CopyJobRow.id.desc())
        ).first()
        return _status(row) if row else None


def create_job(
    task: str,
    options: CopyOptions | None = None,
    *,
    category: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    settings: Settings | None = None,
) -> JobStatus:
    """A new job over the products of `category` (all if None), at most `limit`, in id order."""
    if task not in PRODUCT_TASKS:
        raise ValueError(f"unknown batch task {task!r}: use one of {', '.join(PRODUCT_TASKS)}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    options = options or CopyOptions()
    settings = settings or get_settings()
    engine = _engine(settings)
    catalog = CatalogStore(engine)
    ids = [p.id for p in catalog.iter_products(category=category, limit=limit)]
    with session_scope(engine) as s:
        job = CopyJobRow(
            task=task,
            params=options.model_dump(),
            signature=job_signature(task, options, category, limit),
            category=category,
            max_products=limit,
            batch_size=batch_size,
            total=len(ids),
            status="running" if ids else "done",
            finished_at=None if ids else datetime.utcnow(),
        )
        s.add(job)
        s.flush()
        for start in range(0, len(ids), 1000):
            s.add_all(
                CopyJobItemRow(job_id=job.id, seq=start + i, product_id=pid)
                for i, pid in enumerate(ids[start : start + 1000])
            )
        s.flush()
        return _status(job)


def get_job(job_id: int, *, settings: Settings | None = None) -> JobStatus:
    with session_scope(_engine(settings)) as s:
        row = s.get(CopyJobRow, job_id)
        if row is None:
            raise JobNotFound(f"unknown copy job id {job_id}")
        return _status(row)


def list_jobs(*, limit: int = 50, settings: Settings | None = None) -> list[JobStatus]:
    with session_scope(_engine(settings)) as s:
        rows = s.scalars(select(CopyJobRow).order_by(CopyJobRow.id.desc()).limit(limit))
        return [_status(r) for r in rows]


def _runner_alive(row: CopyJobRow) -> bool:
    if not row.runner_pid or row.runner_host != socket.gethostname():
        return False  # another host's runner cannot be checked; its heartbeat decides
    if row.runner_pid == os.getpid():
        return True
    try:
        os.kill(row.runner_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cancel_job(job_id: int, *, settings: Settings | None = None) -> JobStatus:
    """Ask the runner to stop before its next batch; with no live runner, cancel now."""
    with session_scope(_engine(settings)) as s:
        row = s.get(CopyJobRow, job_id)
        if row is None:
            raise JobNotFound(f"unknown copy job id {job_id}")
        if row.status in ("done", "cancelled"):
            return _status(row)
        row.cancel_requested = True
        if row.status != "running" or not _runner_alive(row):
            row.status = "cancelled"
            row.finished_at = datetime.utcnow()
        s.flush()
        return _status(row)


def _claim(engine: Engine, job_id: int) -> JobStatus:
    """Make this process the job's runner (a resumed job runs again from its pending items)."""
    with session_scope(engine) as s:
        row = s.get(CopyJobRow, job_id)
        if row is None:
            raise JobNotFound(f"unknown copy job id {job_id}")
        if row.status == "running" and row.runner_pid != os.getpid() and _runner_alive(row):
            raise JobBusy(f"copy job {job_id} is being run by process {row.runner_pid}")
        if not (row.status == "running" and row.runner_pid == os.getpid()):
            # Resuming a stopped job starts afresh; a claim by start_job keeps a cancel
            # that arrived before its thread began.
            row.cancel_requested = False
        row.runner_pid = os.getpid()
        row.runner_host = socket.gethostname()
        row.error = ""
        row.finished_at = None
        row.status = "running"
        s.flush()
        return _status(row)


def _finish(engine: Engine, job_id: int, status: str, error: str = "") -> JobStatus:
    with session_scope(engine) as s:
        row = s.get(CopyJobRow, job_id)
        assert row is not None
        row.status = status
        row.error = error[:4000]
        row.runner_pid = None
        row.finished_at = datetime.utcnow()
        s.flush()
        return _status(row)


def run_job(
    job_id: int,
    *,
    writer: CopyWriter | None = None,
    settings: Settings | None = None,
    on_batch: Callable[[JobStatus], None] | None = None,
) -> JobStatus:
    """Run (or resume) a job until no item is pending, it is cancelled, or it fails.

    on_batch is called after each batch commits, with the job's status. An exception
    (from the model, the store or on_batch) marks the job failed and propagates; its
    pending items stay pending for the next run. An LLMError aborts the batch rather than
    marking its products failed: the model being down says nothing about them."""
    settings = settings or get_settings()
    engine = _engine(settings)
    writer = writer or CopyWriter(settings)
    status = _claim(engine, job_id)
    options = CopyOptions(**status.params)
    try:
        while True:
            with session_scope(engine) as s:
                job = s.get(CopyJobRow, job_id)
                assert job is not None
                if job.cancel_requested:
                    break
                items = list(
                    s.scalars(
                        select(CopyJobItemRow)
                        .where(CopyJobItemRow.job_id == job_id, CopyJobItemRow.status == "pending")
                        .order_by(CopyJobItemRow.seq)
                        .limit(job.batch_size)
                    )
                )
            if not items:
                return _finish(engine, job_id, "done")
            _run_batch(engine, writer, job_id, status.task, options, items)
            if on_batch is not None:
                on_batch(get_job(job_id, settings=settings))
    except BaseException as e:
        kind = "interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__
        _finish(engine, job_id, "failed", f"{kind}: {e}")
        raise
    return _finish(engine, job_id, "cancelled")


def start_job(
    task: str,
    options: CopyOptions | None = None,
    *,
    category: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    settings: Settings | None = None,
    writer: CopyWriter | None = None,
) -> JobStatus:
    """Create a job and run it on a background thread (for the API); poll get_job, stop
    it with cancel_job. A failure is recorded on the job (status failed, error)."""
    settings = settings or get_settings()
    status = create_job(
        task, options, category=category, limit=limit, batch_size=batch_size, settings=settings
    )
    if status.total:
        _claim(_engine(settings), status.id)  # a live runner from the start: cancel waits

        def _run() -> None:
            try:
                run_job(status.id, writer=writer, settings=settings)
            except Exception:  # noqa: BLE001 - already recorded on the job row
                logger.warning("copy job %s failed", status.id, exc_info=True)

        threading.Thread(target=_run, name=f"copy-job-{status.id}", daemon=True).start()
    return get_job(status.id, settings=settings)


def _run_batch(
    engine: Engine,
    writer: CopyWriter,
    job_id: int,
    task: str,
    options: CopyOptions,
    items: list[CopyJobItemRow],
) -> None:
    products = writer.catalog.get_products([i.product_id for i in items])
    present = [i for i in items if i.product_id in products]
    done = failed = 0
    with session_scope(engine) as s:
        if present:
            results = writer.generate_for_products(
                task,
                [products[i.product_id] for i in present],
                options,
                job_id=job_id,
                session=s,
            )
            for item, per_product in zip(present, results, strict=True):
                ok = all(r.passed for r in per_product)
                s.execute(
                    update(CopyJobItemRow)
                    .where(CopyJobItemRow.id == item.id)
                    .values(
                        status="done" if ok else "failed",
                        copy_id=per_product[0].id,
                        error="" if ok else "; ".join(per_product[0].failed_checks),
                        updated_at=datetime.utcnow(),
                    )
                )
                done += ok
                failed += not ok
        for item in items:
            if item.product_id not in products:  # deleted from the catalogue since
                s.execute(
                    update(CopyJobItemRow)
                    .where(CopyJobItemRow.id == item.id)
                    .values(status="failed", error="product no longer in the catalogue")
                )
                failed += 1
        s.execute(
            update(CopyJobRow)
            .where(CopyJobRow.id == job_id)
            .values(
                done=CopyJobRow.done + done,
                failed=CopyJobRow.failed + failed,
                updated_at=datetime.utcnow(),
            )
        )


def item_counts(job_id: int, *, settings: Settings | None = None) -> dict[str, int]:
    """{status: count} of a job's items (a consistency view independent of the counters)."""
    with session_scope(_engine(settings)) as s:
        rows = s.execute(
            select(CopyJobItemRow.status, func.count())
            .where(CopyJobItemRow.job_id == job_id)
            .group_by(CopyJobItemRow.status)
        ).all()
        return {st: n for st, n in rows}
