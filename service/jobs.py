"""Runs copy batch jobs started through the Application (over HTTP), one at a time, on one
worker thread.

One at a time on purpose: a job is model-bound, and two jobs on the same CPU (or GPU
engine) only make both slower while starving the interactive requests. Progress, cancel
and resume live in the database (service.copy.batch), so any API process can report or
cancel a job another one runs. At start-up `resume_orphans` takes over the jobs a dead
process left running or queued (their owner's pid and start token say it is gone) and
queues them here; a job a live process owns is left to it.

On the database queue (PostgreSQL, service/copy/queue.py) there is no runner thread: a
job's items wait in the database for any worker, and this process runs one worker of its
own (settings.api_copy_worker) beside the `recsmith worker` processes. After a restart
nothing needs adopting: a dead worker's items are claimed again once its lease runs out.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from service.config import Settings
from service.copy.batch import adopt_orphans, cancel_job, get_job, list_jobs, queue_mode, run_job
from service.copy.writer import CopyWriter
from service.worker import Worker

logger = logging.getLogger("service.jobs")


class JobRunner:
    def __init__(self, settings: Settings, writer_factory: Callable[[], CopyWriter]) -> None:
        self.settings = settings
        self._writer_factory = writer_factory
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.current: int | None = None
        self.shared = queue_mode(settings)
        self.worker: Worker | None = None

    def _worker(self) -> Worker | None:
        """This process's queue worker, started on first need (None when turned off)."""
        if not self.settings.api_copy_worker:
            return None
        with self._lock:
            if self.worker is None:
                self.worker = Worker(self.settings, self._writer_factory)
            return self.worker.start()

    def resume_orphans(self) -> list[int]:
        """Queue the jobs left running/queued by a dead process; their ids. On the database
        queue: the running jobs, whose pending items any worker (this one too) claims."""
        if self.shared:
            ids = [j.id for j in list_jobs(limit=1000, settings=self.settings)
                   if j.status == "running" and j.pending]  # fmt: skip
            if ids:
                self._worker()
            return ids
        ids = adopt_orphans(settings=self.settings)
        for job_id in ids:
            logger.info("resuming copy job %s left by a stopped process", job_id)
            self.submit(job_id)
        return ids

    def submit(self, job_id: int) -> None:
        if self.shared:
            worker = self._worker()
            if worker is not None:
                worker.wake()
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="copy-jobs", daemon=True)
                self._thread.start()
        self._queue.put(job_id)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                if get_job(job_id, settings=self.settings).status in ("done", "cancelled"):
                    continue  # cancelled while queued
                self.current = job_id
                run_job(job_id, writer=self._writer_factory(), settings=self.settings)
            except Exception:  # noqa: BLE001 - the job row says failed, and why
                logger.warning("copy job %s failed", job_id, exc_info=True)
            finally:
                self.current = None

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Cancel what is queued or running (the runner stops before its next batch). On the
        database queue jobs outlive this process: its worker stops and gives its items back."""
        if self.shared:
            if self.worker is not None:
                self.worker.stop(timeout_s)
            return
        pending: list[int] = []
        while True:
            try:
                j = self._queue.get_nowait()
            except queue.Empty:
                break
            if j is not None:
                pending.append(j)
        for job_id in pending + ([self.current] if self.current is not None else []):
            try:
                cancel_job(job_id, settings=self.settings)
            except Exception:  # noqa: BLE001 - shutting down anyway
                logger.warning("could not cancel copy job %s", job_id, exc_info=True)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
