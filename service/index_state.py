"""Keeping the indexes in step with writes, without blocking readers needlessly (owned by
the Application; the API's concurrent requests are why it exists).

Readers (search, similar, recommendations) share the indexes; an index sync replaces
arrays under them, so syncs take the lock exclusively. Product writes sync at once (the
response reports it, and a search right after sees the product); interaction appends only
mark the co-interaction graph stale, and the next read rebuilds it at most every
`min_interval_s` (a click stream must not rebuild it per event).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
    def __init__(self, rs: Recsmith, min_interval_s: float = 2.0) -> None:
        self.rs = rs
        self.lock = RWLock()
        self.min_interval_s = min_interval_s
        self._stale = False
        self._last_sync = 0.0
        self._flag = threading.Lock()

    def sync(
        self,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> IndexReport:
        with self.lock.write():
            report = self.rs.sync_index(progress, on_total)
            with self._flag:
                self._stale = False
                self._last_sync = time.monotonic()
            return report

    def mark_stale(self) -> None:
        with self._flag:
            self._stale = True

    @contextmanager
    def reading(self) -> Iterator[Recsmith]:
        """Use the indexes; first refresh them if interactions arrived a while ago."""
        with self._flag:
            due = self._stale and time.monotonic() - self._last_sync >= self.min_interval_s
        if due:
            self.sync()
        with self.lock.read():
            yield self.rs
