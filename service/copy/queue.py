"""The copy-job queue in the database: per-item claims that several workers on several
hosts share.

A job's items are its queue. A worker claims the next `batch_size` pending items of the
oldest running job with `SELECT … FOR UPDATE SKIP LOCKED` (PostgreSQL: two workers never
wait on, or take, the same rows) and stamps them with its id and a heartbeat. While it
writes them it refreshes the heartbeat of every item it holds; when the batch commits
(service.copy.batch._run_batch) the items become done/failed — only where the worker still
holds them, so a worker that lost its claim cannot overwrite another's result. A pending
item whose heartbeat is older than the lease belongs to a dead worker and is claimed
again; one claimed `max_attempts` times without finishing is marked failed (a product that
kills its worker must not kill every worker). Cancel is a flag on the job that the claim
query reads: no batch starts after it, the batches in flight finish.

On SQLite the same statements run (no SKIP LOCKED there; SQLite serialises writers) for
the single-process runner; several processes share a queue only on PostgreSQL.

Why not procrastinate: its unit is a task row in its own tables and its workers are its
own processes; here the unit is the job's items (already the resume and progress store,
on SQLite too), which would need mirroring into task rows and back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, exists, or_, select, update

from service.copy.tables import CopyJobItemRow, CopyJobRow
from service.db import session_scope

Item = CopyJobItemRow


def new_worker_id(tag: str = "") -> str:
    """host/pid/random: unique per worker, readable in the items table."""
    parts = [socket.gethostname()[:64], str(os.getpid()), uuid.uuid4().hex[:8]]
    return "/".join(parts + ([tag[:16]] if tag else []))


@dataclass
class ClaimedItem:
    id: int
    product_id: str


@dataclass
class Claim:
    """A batch of one job's items, held by one worker."""

    job_id: int
    task: str
    params: dict[str, Any]
    items: list[ClaimedItem] = field(default_factory=list)


def _claimable(job_id: int, stale: datetime):  # noqa: ANN202 - a where clause
    return and_(
        Item.job_id == job_id,
        Item.status == "pending",
        or_(Item.worker_id.is_(None), Item.heartbeat_at.is_(None), Item.heartbeat_at < stale),
    )


def claim_batch(
    engine: Engine,
    worker_id: str,
    *,
    lease_s: float,
    max_attempts: int,
    job_id: int | None = None,
) -> Claim | None:
    """Claim the next batch of the oldest running, uncancelled job (only `job_id` if given);
    None when no item is claimable."""
    now = datetime.utcnow()
    stale = now - timedelta(seconds=lease_s)
    with session_scope(engine) as s:
        jobs = select(CopyJobRow).where(
            CopyJobRow.status == "running", CopyJobRow.cancel_requested.is_(False)
        )
        if job_id is not None:
            jobs = jobs.where(CopyJobRow.id == job_id)
        for job in s.scalars(jobs.order_by(CopyJobRow.id)).all():
            # Items that wore out their workers: failed, not claimed again.
            s.execute(
                update(Item)
                .where(
                    _claimable(job.id, stale),
                    Item.worker_id.is_not(None),
                    Item.attempts >= max_attempts,
                )  # fmt: skip
                .values(
                    status="failed",
                    worker_id=None,
                    updated_at=now,
                    error=f"abandoned: its worker stopped {max_attempts} times",
                )  # fmt: skip
                .execution_options(synchronize_session=False)
            )
            rows = s.execute(
                select(Item.id, Item.product_id)
                .where(_claimable(job.id, stale))
                .order_by(Item.seq)
                .limit(job.batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                continue
            ids = [r.id for r in rows]
            # The lease guard again: on SQLite (no row locks) a concurrent claimer's commit
            # in between must not be overwritten; on PostgreSQL the rows are ours already.
            s.execute(
                update(Item)
                .where(Item.id.in_(ids), _claimable(job.id, stale))
                .values(
                    worker_id=worker_id,
                    claimed_at=now,
                    heartbeat_at=now,
                    attempts=Item.attempts + 1,
                )  # fmt: skip
                .execution_options(synchronize_session=False)
            )
            held = set(s.scalars(select(Item.id).where(Item.id.in_(ids),
                                                       Item.worker_id == worker_id)))  # fmt: skip
            items = [ClaimedItem(r.id, r.product_id) for r in rows if r.id in held]
            if items:
                return Claim(job.id, job.task, dict(job.params or {}), items)
    return None


def heartbeat(engine: Engine, worker_id: str) -> int:
    """Refresh the heartbeat of every item this worker holds; how many it holds."""
    with session_scope(engine) as s:
        return s.execute(
            update(Item)
            .where(Item.worker_id == worker_id, Item.status == "pending")
            .values(heartbeat_at=datetime.utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount


def release(
    engine: Engine,
    worker_id: str,
    item_ids: list[int] | None = None,
    *,
    count_attempt: bool = False,
) -> int:
    """Give back the pending items this worker holds (only `item_ids` if given; a clean
    stop: the attempt does not count, unless `count_attempt`); how many."""
    values: dict[str, Any] = {"worker_id": None, "heartbeat_at": None, "claimed_at": None}
    if not count_attempt:
        values["attempts"] = Item.attempts - 1
    where = [Item.worker_id == worker_id, Item.status == "pending"]
    if item_ids is not None:
        where.append(Item.id.in_(item_ids))
    with session_scope(engine) as s:
        return s.execute(
            update(Item).where(*where).values(**values).execution_options(synchronize_session=False)
        ).rowcount


def live_claims(engine: Engine, job_id: int, lease_s: float) -> int:
    """Pending items of the job held by a worker whose heartbeat is within the lease."""
    stale = datetime.utcnow() - timedelta(seconds=lease_s)
    with session_scope(engine) as s:
        return len(
            s.scalars(
                select(Item.id).where(
                    Item.job_id == job_id,
                    Item.status == "pending",
                    Item.worker_id.is_not(None),
                    Item.heartbeat_at >= stale,
                )  # fmt: skip
            ).all()
        )


def settle(engine: Engine, job_id: int, lease_s: float) -> str | None:
    """Close a running job that needs no more work: done when no item is pending, cancelled
    when a cancel was asked and no live worker still holds an item. Compare-and-set, so of
    the workers finishing its last batches exactly one closes it. The new status, or None."""
    now = datetime.utcnow()
    stale = now - timedelta(seconds=lease_s)
    pending = exists().where(Item.job_id == CopyJobRow.id, Item.status == "pending")
    held = exists().where(
        Item.job_id == CopyJobRow.id, Item.status == "pending",
        Item.worker_id.is_not(None), Item.heartbeat_at >= stale,
    )  # fmt: skip
    with session_scope(engine) as s:
        running = [CopyJobRow.id == job_id, CopyJobRow.status == "running"]
        done = s.execute(
            update(CopyJobRow)
            .where(*running, ~pending)
            .values(status="done", finished_at=now, runner_pid=None, runner_token="")
            .execution_options(synchronize_session=False)
        ).rowcount
        if done:
            return "done"
        cancelled = s.execute(
            update(CopyJobRow)
            .where(*running, CopyJobRow.cancel_requested.is_(True), ~held)
            .values(status="cancelled", finished_at=now, runner_pid=None, runner_token="")
            .execution_options(synchronize_session=False)
        ).rowcount
        return "cancelled" if cancelled else None


class Heartbeat:
    """A thread refreshing a worker's claims every lease/4 until stopped."""

    def __init__(self, engine: Engine, worker_id: str, lease_s: float) -> None:
        self.engine, self.worker_id = engine, worker_id
        self.every_s = max(lease_s / 4, 0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copy-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):  # a missed beat only ages the claims
                heartbeat(self.engine, self.worker_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
