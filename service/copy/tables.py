"""ORM tables of the copy stage: generated texts, batch jobs and their per-product items."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.orm import Base, IntegerId


def _now() -> datetime:
    return datetime.utcnow()


class CopyRow(IntegerId, Base):
    """One generated text (one variant of one request), with what produced it."""

    __tablename__ = "copies"
    __table_args__ = (
        Index("ix_copies_key", "request_key"),
        Index("ix_copies_product_task", "product_id", "task"),
        Index("ix_copies_status", "status"),
        # A batch job writes each (product, task, variant) once: a worker that retries an
        # item another (presumed dead) worker already wrote inserts ON CONFLICT DO NOTHING.
        # Rows outside a job (job_id NULL) never conflict: NULLs are distinct.
        Index("ux_copies_job_item", "job_id", "task", "product_id", "variant", unique=True),
    )

    # sha256 of task + products + canonical params + model + template versions: the cache key.
    request_key: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(32))
    # The single product of a per-product task; None for a headline over several items.
    product_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    product_ids: Mapped[list] = mapped_column(JSON, default=list)
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # canonical request parameters
    language: Mapped[str] = mapped_column(String(8))
    variant: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(Text, default="")
    edited_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_id: Mapped[str] = mapped_column(String(256), default="")
    backend: Mapped[str] = mapped_column(String(32), default="")
    template: Mapped[str] = mapped_column(String(128), default="")
    template_version: Mapped[str] = mapped_column(String(64), default="")
    prompt: Mapped[str] = mapped_column(Text, default="")  # what the model saw last (audit)
    checks: Mapped[dict] = mapped_column(JSON, default=dict)  # name → {ok, detail, found}
    failed_checks: Mapped[list] = mapped_column(JSON, default=list)
    passed: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    # draft | approved | rejected. A text refused by copy_on_fail=refuse is stored rejected.
    status: Mapped[str] = mapped_column(String(16), default="draft")
    note: Mapped[str] = mapped_column(Text, default="")  # why rejected / refused
    meta: Mapped[dict] = mapped_column(JSON, default=dict)  # latency, tokens, fit scores …
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now, onupdate=_now)


class CopyJobRow(IntegerId, Base):
    """A batch job over many products; resumable from its items."""

    __tablename__ = "copy_jobs"

    task: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    # Identity of (task, params, selection): re-running the same command resumes the job.
    signature: Mapped[str] = mapped_column(String(64), index=True)
    category: Mapped[str | None] = mapped_column(String(128), nullable=True)
    max_products: Mapped[int | None] = mapped_column(Integer, nullable=True)
    batch_size: Mapped[int] = mapped_column(Integer, default=8)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)  # stored and passed every check
    failed: Mapped[int] = mapped_column(Integer, default=0)  # stored flagged/refused, or errored
    status: Mapped[str] = mapped_column(
        String(16), default="running"
    )  # running|done|cancelled|failed
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str] = mapped_column(Text, default="")
    runner_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    runner_host: Mapped[str] = mapped_column(String(256), default="")
    # The owner's process start time: with the pid, tells a live owner from a reused pid.
    runner_token: Mapped[str] = mapped_column(String(64), default="")
    # Refreshed while the owner runs: how a runner on another host is judged alive.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now, onupdate=_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class CopyJobItemRow(IntegerId, Base):
    """One product of a job: pending until the batch holding it commits.

    The queue (service/copy/queue.py): a worker claims pending items (worker_id, claimed_at)
    and refreshes heartbeat_at while it writes them; a pending item whose heartbeat is older
    than the lease belongs to a dead worker and is claimed again (attempts counts claims)."""

    __tablename__ = "copy_job_items"
    __table_args__ = (
        Index("ux_copy_job_items", "job_id", "product_id", unique=True),
        Index("ix_copy_job_items_status", "job_id", "status", "seq"),
    )

    job_id: Mapped[int] = mapped_column(ForeignKey("copy_jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # processing order
    product_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|done|failed
    copy_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now, onupdate=_now)
