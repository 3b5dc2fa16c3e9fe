"""A copy worker: claims batches of job items from the database queue, writes their copy
through the Application's writer, and keeps its claims alive with a heartbeat.

`recsmith worker` runs one in the foreground (any number, on any host that reaches the
database and the LLM servers); the API runs one on a thread (service/jobs.py). It writes
`concurrency` batches at once, one loop each, sharing one worker id (so one heartbeat
refreshes all its claims). Stopping (SIGTERM) lets the batches in flight commit for up to
`grace_s`, then gives the claims it still holds back to the queue.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from service.config import Settings, parse_base_urls
from service.copy import queue
from service.copy.batch import queue_mode, run_batch
from service.copy.tasks import CopyOptions
from service.copy.writer import CopyWriter
from service.db import get_engine
from service.llm.base import LLMError

logger = logging.getLogger("service.worker")


def default_concurrency(settings: Settings) -> int:
    """settings.worker_concurrency, or where 0: one batch per LLM server of the openai
    backend (a server batches the requests it gets), one for an in-process model."""
    if settings.worker_concurrency:
        return settings.worker_concurrency
    backend = settings.writer_backend or settings.llm_backend
    return len(parse_base_urls(settings.llm_base_url)) if backend == "openai" else 1


class Worker:
    def __init__(
        self,
        settings: Settings,
        writer_factory: Callable[[], CopyWriter],
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.engine = get_engine(settings.db_url)
        self.concurrency = max(1, concurrency or default_concurrency(settings))
        self.worker_id = worker_id or queue.new_worker_id()
        self._writer_factory = writer_factory
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._loops: list[threading.Thread] = []
        self._beat: queue.Heartbeat | None = None
        self.done = self.failed = self.batches = 0
        self._count = threading.Lock()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._loops)

    def start(self) -> Worker:
        if self.running:
            return self
        self._stop.clear()
        self._beat = queue.Heartbeat(self.engine, self.worker_id, self.settings.worker_lease_s)
        self._beat.start()
        self._loops = [
            threading.Thread(target=self._loop, name=f"copy-worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in self._loops:
            t.start()
        logger.info("copy worker %s: %d loop(s)", self.worker_id, self.concurrency)
        return self

    def wake(self) -> None:
        """Look for work now (a job was just submitted) rather than at the next poll."""
        self._wake.set()

    def stop(self, grace_s: float = 30.0) -> int:
        """Stop claiming, let the batches in flight commit for up to grace_s, then give back
        the claims still held; how many were given back."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + grace_s
        for t in self._loops:
            t.join(timeout=max(deadline - time.monotonic(), 0))
        if self._beat is not None:
            self._beat.stop()
        released = queue.release(self.engine, self.worker_id)
        if released:
            logger.info("copy worker %s gave back %d item(s)", self.worker_id, released)
        return released

    def run_once(self, writer: CopyWriter) -> bool:
        """Claim and write one batch; False when there was nothing to claim."""
        s = self.settings
        claim = queue.claim_batch(self.engine, self.worker_id, lease_s=s.worker_lease_s,
                                  max_attempts=s.worker_max_attempts)  # fmt: skip
        if claim is None:
            return False
        try:
            done, failed = run_batch(
                self.engine, writer, claim, CopyOptions(**claim.params), self.worker_id
            )
        except LLMError as e:
            # The model being down says nothing about the products: give them back
            # (uncounted) and wait a poll before claiming again.
            logger.warning("copy job %s: the model failed (%s); items given back", claim.job_id, e)
            queue.release(self.engine, self.worker_id, [i.id for i in claim.items])
            self._stop.wait(s.worker_poll_s)
            return True
        except Exception:
            # Anything else may be the items' fault: the attempt counts (max_attempts).
            logger.warning("copy job %s: a batch failed", claim.job_id, exc_info=True)
            queue.release(
                self.engine, self.worker_id, [i.id for i in claim.items], count_attempt=True
            )
            return True
        with self._count:
            self.done, self.failed, self.batches = (
                self.done + done, self.failed + failed, self.batches + 1,
            )  # fmt: skip
        queue.settle(self.engine, claim.job_id, s.worker_lease_s)
        return True

    def _loop(self) -> None:
        writer = self._writer_factory()
        while not self._stop.is_set():
            try:
                worked = self.run_once(writer)
            except Exception:  # noqa: BLE001 - the database away: try again after a poll
                logger.warning("copy worker %s: claim failed", self.worker_id, exc_info=True)
                worked = False
            if not worked:
                self._wake.wait(self.settings.worker_poll_s)
                self._wake.clear()


def check_queue(settings: Settings) -> None:
    """Workers need the database queue; a ValueError that says why otherwise."""
    if not queue_mode(settings):
        raise ValueError(
            "workers need the database queue: set RECSMITH_DATABASE_URL to PostgreSQL "
            "(or RECSMITH_COPY_QUEUE=database); on SQLite the API or `recsmith copy batch` "
            "runs jobs"
        )


def run_until_signalled(
    settings: Settings,
    writer_factory: Callable[[], CopyWriter],
    *,
    concurrency: int | None = None,
    grace_s: float = 30.0,
    on_start: Callable[[Worker], None] | None = None,
) -> Worker:
    """Run a worker in the foreground until SIGTERM or SIGINT (call from the main thread),
    then stop it: the batches in flight get grace_s to commit, the rest is given back."""
    check_queue(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = Worker(settings, writer_factory, concurrency=concurrency).start()
    if on_start is not None:
        on_start(worker)
    try:
        while not stop.wait(0.5):
            if not worker.running:
                break
    finally:
        worker.stop(grace_s)
    return worker
