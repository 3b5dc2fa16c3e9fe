"""Batch copy jobs: one task over many products, resumable and cancellable.

A job snapshots its product ids as items (pending) when created. The runner takes the
next `batch_size` pending items, writes their copy in ONE `generate` call (plus one per
retry round), and commits the new texts, the items' new status and the job's counters in
ONE transaction. A runner killed at any point therefore loses at most the batch in
flight, and nothing is done twice: a re-run picks up the pending items (and a text that
was committed is found in the store by its request key, not regenerated).

Cancelling sets a flag the runner reads before each batch (so the API can cancel a job
another process runs); a job with no live runner is cancelled at once, and a runner never
claims a job that was cancelled before it got to it (only an explicit restart does).

Two runners (service/copy/queue.py, `settings.copy_queue`): on PostgreSQL items are claimed
per batch by any number of workers (`recsmith worker`, the API's own worker, `recsmith copy
batch`), each claim held by a heartbeat and taken over when its worker dies; a batch commits
its items only where its worker still holds them, and a text is stored once per (job, task,
product, variant) (a unique index, insert ON CONFLICT DO NOTHING). Progress is read from
the items. On SQLite one process runs a job, with the ownership below.

Ownership (the thread runner): the runner records host, pid and a start token (the
process's start time, so a reused pid is not mistaken for the owner) and refreshes a
heartbeat while it runs. A job left `running` by a dead owner is an orphan: `adopt_orphans`
(the API at start-up) takes it over with a compare-and-set on the owner, so two starting
processes never both run it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TypedDict, Unpack

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from service.catalog.store import CatalogStore
from service.config import Settings, get_settings
from service.copy.queue import Claim, Heartbeat, claim_batch, new_worker_id, release
from service.copy.queue import settle as settle_job
from service.copy.store import canonical_json
from service.copy.tables import CopyJobItemRow, CopyJobRow
from service.copy.tasks import CopyOptions, JobStatus
from service.copy.writer import CopyWriter
from service.db import get_engine, session_scope
from service.vocab import ProductTask

logger = logging.getLogger(__name__)
PRODUCT_TASKS = tuple(m.value for m in ProductTask)


class JobNotFound(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class JobBusy(RuntimeError):
    """Another live process is running this job."""


class TooManyJobs(RuntimeError):
    """The cap on queued or running jobs (settings.copy_max_active_jobs) is reached."""


HEARTBEAT_S = 15.0  # how often a running job's owner says it is alive
STALE_S = 120.0  # an owner on another host silent this long is taken for dead
_submit_lock = threading.Lock()  # find-or-create of identical requests, in one process


def _engine(settings: Settings | None) -> Engine:
    return get_engine((settings or get_settings()).db_url)


def queue_mode(settings: Settings | None = None) -> bool:
    """Whether jobs run on the database queue (shared by workers) rather than on one
    process's runner thread."""
    settings = settings or get_settings()
    if settings.copy_queue != "auto":
        return settings.copy_queue == "database"
    return not settings.db_url.startswith("sqlite")


def process_token(pid: int) -> str:
    """A process's start time (Linux /proc, in clock ticks since boot); "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


@cache
def _me() -> tuple[str, int, str]:
    return socket.gethostname(), os.getpid(), process_token(os.getpid())


def _own(row: CopyJobRow) -> None:
    row.runner_host, row.runner_pid, row.runner_token = _me()
    row.heartbeat_at = datetime.utcnow()


def _is_me(row: CopyJobRow) -> bool:
    host, pid, token = _me()
    return row.runner_host == host and row.runner_pid == pid and row.runner_token == token


def _counts(s: Session, job_ids: list[int]) -> dict[int, dict[str, int]]:
    """{job: {item status: n}}: progress as the items say (every worker writes them)."""
    out: dict[int, dict[str, int]] = {j: {} for j in job_ids}
    if job_ids:
        rows = s.execute(
            select(CopyJobItemRow.job_id, CopyJobItemRow.status, func.count())
            .where(CopyJobItemRow.job_id.in_(job_ids))
            .group_by(CopyJobItemRow.job_id, CopyJobItemRow.status)
        ).all()
        for job_id, st, n in rows:
            out[job_id][st] = n
    return out


def _status(row: CopyJobRow, counts: dict[str, int]) -> JobStatus:
    return JobStatus(
        id=row.id,
        task=row.task,
        params=dict(row.params or {}),
        category=row.category,
        max_products=row.max_products,
        batch_size=row.batch_size,
        total=row.total,
        done=counts.get("done", 0),
        failed=counts.get("failed", 0),
        pending=counts.get("pending", 0),
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
        return _status(row, _counts(s, [row.id])[row.id]) if row else None


BATCH_SIZE = 8  # products per writer call unless a job says otherwise


class JobScope(TypedDict, total=False):
    """`create_job`'s keywords for which products a job covers and how it runs them."""

    category: str | None
    limit: int | None
    batch_size: int
    settings: Settings | None


def create_job(
    task: str,
    options: CopyOptions | None = None,
    *,
    category: str | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    settings: Settings | None = None,
    owner: bool = False,
) -> JobStatus:
    """A new job over the products of `category` (all if None), at most `limit`, in id order.
    With `owner`, this process owns it from the start (it will run it: the API's queue)."""
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
        if owner and ids and not queue_mode(settings):
            _own(job)
        s.add(job)
        s.flush()
        for start in range(0, len(ids), 1000):
            s.add_all(
                CopyJobItemRow(job_id=job.id, seq=start + i, product_id=pid)
                for i, pid in enumerate(ids[start : start + 1000])
            )
        s.flush()
        return _status(job, {"pending": len(ids)})


def get_job(job_id: int, *, settings: Settings | None = None) -> JobStatus:
    with session_scope(_engine(settings)) as s:
        row = s.get(CopyJobRow, job_id)
        if row is None:
            raise JobNotFound(f"unknown copy job id {job_id}")
        return _status(row, _counts(s, [job_id])[job_id])


def list_jobs(*, limit: int = 50, settings: Settings | None = None) -> list[JobStatus]:
    with session_scope(_engine(settings)) as s:
        rows = list(s.scalars(select(CopyJobRow).order_by(CopyJobRow.id.desc()).limit(limit)))
        counts = _counts(s, [r.id for r in rows])
        return [_status(r, counts[r.id]) for r in rows]


def _runner_alive(row: CopyJobRow) -> bool:
    """Whether the recorded owner still lives: on this host by its pid and start token,
    on another by its heartbeat."""
    if not row.runner_pid:
        return False
    if row.runner_host != socket.gethostname():
        beat = row.heartbeat_at
        return beat is not None and datetime.utcnow() - beat < timedelta(seconds=STALE_S)
    if _is_me(row):
        return True
    try:
        os.kill(row.runner_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    token = process_token(row.runner_pid)
    return not (row.runner_token and token and token != row.runner_token)  # a reused pid


def cancel_job(job_id: int, *, settings: Settings | None = None) -> JobStatus:
    """Ask the runners to stop before their next batch; with none alive, cancel now (on the
    queue: no live worker holds one of its items)."""
    settings = settings or get_settings()
    engine = _engine(settings)
    with session_scope(engine) as s:
        row = s.get(CopyJobRow, job_id)
        if row is None:
            raise JobNotFound(f"unknown copy job id {job_id}")
        if row.status not in ("done", "cancelled"):
            row.cancel_requested = True
            idle = not queue_mode(settings) and not _runner_alive(row)
            if row.status != "running" or idle:
                row.status, row.finished_at = "cancelled", datetime.utcnow()
    if queue_mode(settings):
        settle_job(engine, job_id, settings.worker_lease_s)
    return get_job(job_id, settings=settings)


def _claim(engine: Engine, job_id: int, restart: bool = False, own: bool = True) -> JobStatus:
    """Make this process the job's runner (a resumed job runs again from its pending items).
    Without `own` (the queue) the job is only set running: workers share it.

    A job cancelled (or asked to cancel) before its runner got to it stays cancelled: the
    status returned says so and nothing runs. `restart` (an explicit re-run) resumes it."""
    with session_scope(engine) as s:
        row = s.get(CopyJobRow, job_id)
        if row is None:
            raise JobNotFound(f"unknown copy job id {job_id}")
        if own and row.status == "running" and not _is_me(row) and _runner_alive(row):
            raise JobBusy(f"copy job {job_id} is being run by process {row.runner_pid}")
        cancelled = row.status == "cancelled" or (row.cancel_requested and row.status != "done")
        if cancelled and not restart:
            row.status, row.cancel_requested = "cancelled", True
            row.finished_at = row.finished_at or datetime.utcnow()
            row.runner_pid, row.runner_token = None, ""
            s.flush()
            return _status(row, _counts(s, [job_id])[job_id])
        # Compare-and-set: a cancel committed since the read above is not overwritten.
        guard = [CopyJobRow.id == job_id]
        if not restart:
            guard += [CopyJobRow.cancel_requested.is_(False), CopyJobRow.status != "cancelled"]
        host, pid, token = _me() if own else ("", None, "")
        claimed = s.execute(
            update(CopyJobRow)
            .where(*guard)
            .values(
                cancel_requested=False,
                runner_host=host,
                runner_pid=pid,
                runner_token=token,
                heartbeat_at=datetime.utcnow() if own else None,
                error="",
                finished_at=None,
                status="running",
            )  # fmt: skip
            .execution_options(synchronize_session=False)
        ).rowcount
        if not claimed:
            s.execute(
                update(CopyJobRow)
                .where(CopyJobRow.id == job_id)
                .values(status="cancelled", finished_at=datetime.utcnow(), runner_pid=None)
                .execution_options(synchronize_session=False)
            )
        s.flush()
        s.expire(row)
        return _status(s.get(CopyJobRow, job_id), _counts(s, [job_id])[job_id])  # type: ignore[arg-type]


def orphaned_jobs(*, settings: Settings | None = None) -> list[int]:
    """Jobs left running (or queued) by an owner that is gone, oldest first. Those whose
    cancel was requested are marked cancelled here instead."""
    out: list[int] = []
    if queue_mode(settings):  # no owners on the queue: a dead worker's items are reclaimed
        return out
    with session_scope(_engine(settings)) as s:
        for row in s.scalars(
            select(CopyJobRow).where(CopyJobRow.status == "running").order_by(CopyJobRow.id)
        ):
            if _runner_alive(row):
                continue
            if row.cancel_requested:
                row.status, row.finished_at, row.runner_pid = "cancelled", datetime.utcnow(), None
            else:
                out.append(row.id)
    return out


def adopt_orphans(*, settings: Settings | None = None) -> list[int]:
    """Take over the orphaned jobs (compare-and-set on the dead owner, so of two processes
    starting at once only one gets each job); the caller queues them."""
    engine = _engine(settings)
    adopted: list[int] = []
    for job_id in orphaned_jobs(settings=settings):
        with session_scope(engine) as s:
            row = s.get(CopyJobRow, job_id)
            if row is None or row.status != "running" or _runner_alive(row):
                continue
            host, pid, token = _me()
            done = s.execute(
                update(CopyJobRow)
                .where(
                    CopyJobRow.id == job_id,
                    CopyJobRow.status == "running",
                    CopyJobRow.runner_pid.is_(None)
                    if row.runner_pid is None
                    else CopyJobRow.runner_pid == row.runner_pid,
                    CopyJobRow.runner_token == (row.runner_token or ""),
                )
                .values(
                    runner_host=host,
                    runner_pid=pid,
                    runner_token=token,
                    heartbeat_at=datetime.utcnow(),
                )  # fmt: skip
            )
            if done.rowcount == 1:
                adopted.append(job_id)
    return adopted


def submit_job(
    task: str, options: CopyOptions | None = None, **scope: Unpack[JobScope]
) -> tuple[JobStatus, bool]:
    """(job, reused): the queued or running job for the same task, options and products if
    there is one, else a new job owned by this process (`create_job` with the same
    arguments). Raises TooManyJobs at the cap."""
    settings = scope.get("settings") or get_settings()
    options = options or CopyOptions()
    category, limit = scope.get("category"), scope.get("limit")
    batch_size = scope.get("batch_size", BATCH_SIZE)
    engine = _engine(settings)
    sig = job_signature(task, options, category, limit)
    with _submit_lock:
        with session_scope(engine) as s:
            active = list(
                s.scalars(
                    select(CopyJobRow).where(
                        CopyJobRow.status == "running", CopyJobRow.cancel_requested.is_(False)
                    )
                )
            )
        ids = [p.id for p in CatalogStore(engine).iter_products(category=category, limit=limit)]
        for row in active:  # same request, same products: that job, not another
            same = row.signature == sig and row.batch_size == batch_size
            if same and _items(engine, row.id) == ids:
                return get_job(row.id, settings=settings), True
        cap = settings.copy_max_active_jobs
        if len(active) >= cap:
            raise TooManyJobs(
                f"{len(active)} copy jobs are queued or running (the limit is {cap}); "
                "wait for one to finish or cancel one"
            )
        job = create_job(task, options, **{**scope, "settings": settings}, owner=True)
        return job, False


def _items(engine: Engine, job_id: int) -> list[str]:
    with session_scope(engine) as s:
        return list(
            s.scalars(
                select(CopyJobItemRow.product_id)
                .where(CopyJobItemRow.job_id == job_id)
                .order_by(CopyJobItemRow.seq)
            )
        )


def _finish(engine: Engine, job_id: int, status: str, error: str = "") -> JobStatus:
    with session_scope(engine) as s:
        row = s.get(CopyJobRow, job_id)
        assert row is not None
        row.status = status
        row.error = error[:4000]
        row.runner_pid, row.runner_token = None, ""
        row.finished_at = datetime.utcnow()
        s.flush()
        return _status(row, _counts(s, [job_id])[job_id])


def _cancel_requested(engine: Engine, job_id: int) -> bool:
    with session_scope(engine) as s:
        return bool(s.scalar(select(CopyJobRow.cancel_requested).where(CopyJobRow.id == job_id)))


def run_job(
    job_id: int,
    *,
    writer: CopyWriter | None = None,
    settings: Settings | None = None,
    on_batch: Callable[[JobStatus], None] | None = None,
    restart: bool = False,
) -> JobStatus:
    """Run (or resume) a job until no item is pending, it is cancelled, or it fails.

    Batches are claimed from the job's items like any worker's (on the queue, workers
    elsewhere share the job; this returns when the last item is written, by whoever).
    on_batch is called after each batch commits, with the job's status. An exception
    (from the model, the store or on_batch) marks the job failed and propagates; its
    pending items stay pending for the next run. An LLMError aborts the batch rather than
    marking its products failed: the model being down says nothing about them.
    A job cancelled before this claim is not run, unless `restart` (an explicit re-run)."""
    settings = settings or get_settings()
    engine = _engine(settings)
    shared = queue_mode(settings)
    status = _claim(engine, job_id, restart=restart, own=not shared)
    if status.status == "cancelled":
        return status
    writer = writer or CopyWriter(settings)
    options = CopyOptions(**status.params)
    # The thread runner owns the job: any claim left on its items is a dead run's.
    lease_s = settings.worker_lease_s if shared else 0.0
    worker_id = new_worker_id("run")
    beat = Heartbeat(engine, worker_id, settings.worker_lease_s).start()
    beating = threading.Event()
    if not shared:
        threading.Thread(
            target=_heartbeat, args=(engine, job_id, beating), name=f"copy-job-{job_id}-beat",
            daemon=True,
        ).start()  # fmt: skip
    try:
        while not _cancel_requested(engine, job_id):
            claim = claim_batch(engine, worker_id, lease_s=lease_s, job_id=job_id,
                                max_attempts=settings.worker_max_attempts)  # fmt: skip
            if claim is None:
                if _cancel_requested(engine, job_id):
                    break  # asked between the check above and the claim
                if not shared:  # nothing pending (claims of dead runs were claimable)
                    return _finish(engine, job_id, "done")
                settle_job(engine, job_id, lease_s)
                now = get_job(job_id, settings=settings)
                if now.status != "running":
                    return now
                beating.wait(settings.worker_poll_s)  # the rest is held by live workers
                continue
            run_batch(engine, writer, claim, options, worker_id)
            if on_batch is not None:
                on_batch(get_job(job_id, settings=settings))
    except BaseException as e:
        release(engine, worker_id)
        kind = "interrupted" if isinstance(e, KeyboardInterrupt) else type(e).__name__
        _finish(engine, job_id, "failed", f"{kind}: {e}")
        raise
    finally:
        beating.set()
        beat.stop()
    if shared:
        settle_job(engine, job_id, lease_s)
        return get_job(job_id, settings=settings)
    return _finish(engine, job_id, "cancelled")


def _heartbeat(engine: Engine, job_id: int, stop: threading.Event) -> None:
    """Refresh the owner's heartbeat while run_job runs (a batch can take minutes)."""
    host, pid, _token = _me()
    while not stop.wait(HEARTBEAT_S):
        try:
            with session_scope(engine) as s:
                s.execute(
                    update(CopyJobRow)
                    .where(
                        CopyJobRow.id == job_id,
                        CopyJobRow.runner_pid == pid,
                        CopyJobRow.runner_host == host,
                    )  # fmt: skip
                    .values(heartbeat_at=datetime.utcnow())
                )
        except Exception:  # noqa: BLE001 - a missed beat only ages the heartbeat
            logger.debug("heartbeat of copy job %s failed", job_id, exc_info=True)


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
        # A live runner from the start: cancel waits (the thread runner's ownership).
        _claim(_engine(settings), status.id, own=not queue_mode(settings))

        def _run() -> None:
            try:
                run_job(status.id, writer=writer, settings=settings)
            except Exception:  # noqa: BLE001 - already recorded on the job row
                logger.warning("copy job %s failed", status.id, exc_info=True)

        threading.Thread(target=_run, name=f"copy-job-{status.id}", daemon=True).start()
    return get_job(status.id, settings=settings)


def run_batch(
    engine: Engine, writer: CopyWriter, claim: Claim, options: CopyOptions, worker_id: str
) -> tuple[int, int]:
    """Write a claimed batch in one generate call and commit its texts and items together,
    each item only while `worker_id` still holds it (a worker presumed dead whose items
    were taken over writes nothing over them; its texts, if any, conflict away).
    (done, failed) as committed."""
    items = claim.items
    products = writer.catalog.get_products([i.product_id for i in items])
    present = [i for i in items if i.product_id in products]
    done = failed = 0
    now = datetime.utcnow()

    def mark(s: Session, item_id: int, **values: object) -> bool:
        return bool(
            s.execute(
                update(CopyJobItemRow)
                .where(
                    CopyJobItemRow.id == item_id,
                    CopyJobItemRow.status == "pending",
                    CopyJobItemRow.worker_id == worker_id,
                )
                .values(updated_at=now, **values)
                .execution_options(synchronize_session=False)
            ).rowcount
        )

    with session_scope(engine) as s:
        if present:
            results = writer.generate_for_products(
                claim.task,
                [products[i.product_id] for i in present],
                options,
                job_id=claim.job_id,
                session=s,
            )
            for item, per_product in zip(present, results, strict=True):
                ok = all(r.passed for r in per_product)
                if mark(s, item.id, status="done" if ok else "failed", copy_id=per_product[0].id,
                        error="" if ok else "; ".join(per_product[0].failed_checks)):  # fmt: skip
                    done += ok
                    failed += not ok
        for item in items:
            if item.product_id not in products:  # deleted from the catalogue since
                failed += mark(s, item.id, status="failed",
                               error="product no longer in the catalogue")  # fmt: skip
        s.execute(
            update(CopyJobRow)
            .where(CopyJobRow.id == claim.job_id)
            .values(
                done=CopyJobRow.done + done,
                failed=CopyJobRow.failed + failed,
                updated_at=datetime.utcnow(),
            )
        )
    return done, failed


def item_counts(job_id: int, *, settings: Settings | None = None) -> dict[str, int]:
    """{status: count} of a job's items (a consistency view independent of the counters)."""
    with session_scope(_engine(settings)) as s:
        rows = s.execute(
            select(CopyJobItemRow.status, func.count())
            .where(CopyJobItemRow.job_id == job_id)
            .group_by(CopyJobItemRow.status)
        ).all()
        return {st: n for st, n in rows}
