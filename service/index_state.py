"""Keeping the indexes in step with writes, without blocking readers needlessly (owned by
the Application; the API's concurrent requests are why it exists).

Readers (search, similar, recommendations) share the indexes; an index write changes
arrays under them, so writes take the lock exclusively. Product writes are indexed at once
(the response reports it, and a search right after sees the product); interaction appends
mark the co-interaction graph stale, and the next read brings it up to date at most every
`min_interval_s`. Several API processes share the database: each follows its versions
(IndexState.refresh), so none serves an index that drifted after another's write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from service.catalog.models import Product
from service.recsmith import Recsmith
from service.retrieval.indexer import IndexReport


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class IndexState:
    """The lock, plus the catalogue/event versions this process has applied. Before a read
    (at most every `check_interval_s`) the versions in the database are compared with them
    — two primary-key lookups — so a product written through another API process, or
    another host, is indexed here before this process serves (`Recsmith.apply_changes`:
    only the changed products), and new events reach co-interaction at most every
    `min_interval_s` (a click stream must not refresh it per event)."""

    def __init__(
        self, rs: Recsmith, min_interval_s: float = 2.0, check_interval_s: float | None = None
    ) -> None:
        self.rs = rs
        self.lock = RWLock()
        self.min_interval_s = min_interval_s
        if check_interval_s is None:
            check_interval_s = rs.settings.index_check_interval_ms / 1000
        self.check_interval_s = check_interval_s
        self._stale = False
        self._last_sync = 0.0
        self._last_check = -float("inf")
        self._flag = threading.Lock()

    def sync(
        self,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> IndexReport:
        """The full path: every product's hash compared, co-interaction rebuilt."""
        with self.lock.write():
            report = self.rs.sync_index(progress, on_total)
            with self._flag:
                self._stale = False
                self._last_sync = time.monotonic()
            return report

    def apply_changes(self) -> IndexReport:
        """The incremental path of a product write: only the changed products."""
        with self.lock.write():
            return self.rs.apply_changes()

    def write_products(
        self, products: Sequence[Product]
    ) -> tuple[int, int, list[str], IndexReport | None]:
        """A product write, complete when it returns (a dense search finds the products):
        the changed texts are encoded with no lock held (Indexer.prepare; beside the
        transaction's first statements on PostgreSQL); one store transaction writes the
        products, the change log and, with pgvector, their vectors, and commits once they are
        encoded; then this process's indexes take the prepared vectors (no second encode).
        Returns the store's (inserted, updated, changed ids) and the index report."""
        rs = self.rs
        if not rs.synced:  # the first write of a process indexes everything once anyway
            inserted, updated, changed = rs.store.upsert_products(products)
            return inserted, updated, changed, self.apply_changes() if changed else None
        calls = rs.encoder.model_calls
        # PostgreSQL: the text is encoded while the transaction sends its statements (torch
        # and the socket wait both release the GIL); the transaction waits for it before it
        # commits. SQLite: encoded first, as its write lock is the whole database's.
        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(rs.indexer.prepare, products)
            if rs.store.engine.dialect.name != "postgresql":
                job.result()
            hook = rs.indexer.in_transaction(products, job)
            inserted, updated, changed = rs.store.upsert_products(products, hook)
            fresh = job.result()
        if not changed:
            return inserted, updated, changed, None
        with self.lock.write():
            report = rs.apply_changes(fresh)
        report.model_calls = rs.encoder.model_calls - calls
        return inserted, updated, changed, report

    def mark_stale(self) -> None:
        with self._flag:
            self._stale = True

    def refresh(self) -> None:
        """Apply what other processes (or this one) wrote since the versions applied."""
        now = time.monotonic()
        with self._flag:
            if now - self._last_check < self.check_interval_s:
                check = False
            else:
                check, self._last_check = True, now
            events_due = now - self._last_sync >= self.min_interval_s
        if not self.rs.synced:
            self.sync()
            return
        catalogue, events = self.rs.store.versions() if check else (0, 0)
        applied_catalogue, applied_events = self.rs.versions()
        if catalogue > applied_catalogue:
            self.apply_changes()
        with self._flag:
            stale = self._stale or events > applied_events
            self._stale = stale
        if stale and events_due:
            with self.lock.write():
                self.rs.apply_events()
                with self._flag:
                    self._stale = False
                    self._last_sync = time.monotonic()

    @contextmanager
    def reading(self) -> Iterator[Recsmith]:
        """Use the indexes, in step with the database (see the class)."""
        self.refresh()
        with self.lock.read():
            yield self.rs
