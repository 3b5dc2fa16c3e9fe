"""Copy jobs on the database queue (service/copy/queue.py, service/worker.py): per-item
claims with SKIP LOCKED, heartbeats, a dead worker's items claimed again, cancel, and
worker processes (real subprocesses on a real PostgreSQL, SIGKILLed and restarted).

The worker processes write with tests/fakes.py's FakeLLM (tests/copy/queue_worker.py:
`recsmith worker`'s loop, a fixed delay per batch) so that several run side by side on 2
cores; `recsmith worker` itself runs once with the real tiny model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from service.application import Application
from service.catalog.store import CatalogStore
from service.config import Settings
from service.copy import batch as jobs
from service.copy import queue
from service.copy.tables import CopyJobItemRow
from service.copy.tasks import CopyOptions
from service.copy.writer import CopyWriter
from service.db import get_engine, session_scope
from service.llm.base import LLMError
from service.worker import Worker
from tests.copy.conftest import REPO, copies_per_product, postgres_settings
from tests.fakes import FakeLLM, writes_names
from tests.postgres import fresh_database

LEASE_S = 3.0  # the subprocesses' lease: a killed worker's items wait this long


@pytest.fixture
def pg(settings: Settings) -> Iterator[Settings]:
    """A fresh PostgreSQL database with the demo catalogue; the queue on it."""
    with fresh_database() as url:
        s = postgres_settings(settings, url).model_copy(
            update={"copy_max_retries": 0, "worker_poll_s": 0.2}
        )
        yield s
        get_engine(url).dispose()


def _items(s: Settings, job_id: int) -> list[CopyJobItemRow]:
    with session_scope(get_engine(s.db_url)) as ses:
        return list(
            ses.scalars(
                select(CopyJobItemRow)
                .where(CopyJobItemRow.job_id == job_id)
                .order_by(CopyJobItemRow.seq)
            )
        )


def _age_claims(s: Settings, worker_id: str, seconds: float = 3600) -> None:
    """What a dead worker looks like: its heartbeat stopped long ago."""
    with session_scope(get_engine(s.db_url)) as ses:
        ses.execute(
            update(CopyJobItemRow)
            .where(CopyJobItemRow.worker_id == worker_id)
            .values(heartbeat_at=datetime.utcnow() - timedelta(seconds=seconds))
        )


def _claim(s: Settings, worker_id: str, job_id: int | None = None) -> queue.Claim | None:
    return queue.claim_batch(get_engine(s.db_url), worker_id, lease_s=s.worker_lease_s,
                             max_attempts=s.worker_max_attempts, job_id=job_id)  # fmt: skip


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# -- the queue, in-process -------------------------------------------------------------------
def test_concurrent_claims_never_overlap(pg: Settings) -> None:
    """Six claimers at once (SKIP LOCKED): every item claimed, none twice."""
    job = jobs.create_job("title", category="Kitchen", batch_size=2, settings=pg)
    got: dict[str, list[int]] = {}
    start = threading.Barrier(6)

    def claimer(n: int) -> None:
        me = f"test/claimer-{n}"
        got[me] = []
        start.wait()
        while (c := _claim(pg, me)) is not None:
            got[me] += [i.id for i in c.items]

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == len(set(claimed)) == job.total == 21
    assert sum(1 for ids in got.values() if ids) >= 2  # shared, not one claimer taking all
    held = {i.id: i.worker_id for i in _items(pg, job.id)}
    assert all(held[i] == me for me, ids in got.items() for i in ids)


def test_a_dead_workers_items_are_claimed_again_and_its_late_commit_is_ignored(
    db_settings: Settings,
) -> None:
    s = db_settings.model_copy(update={"copy_max_retries": 0, "copy_queue": "database"})
    engine = get_engine(s.db_url)
    job = jobs.create_job("title", CopyOptions(max_words=8), category="Cycling", limit=2,
                          batch_size=2, settings=s)  # fmt: skip
    a = _claim(s, "test/a", job.id)
    assert a is not None and len(a.items) == 2
    assert _claim(s, "test/b", job.id) is None  # held by a live worker
    _age_claims(s, "test/a")
    b = _claim(s, "test/b", job.id)
    assert b is not None and [i.id for i in b.items] == [i.id for i in a.items]
    assert {i.attempts for i in _items(s, job.id)} == {2}

    # The worker taken for dead was only slow: its batch commits now, and marks nothing.
    llm = FakeLLM(s, writes_names())
    w = CopyWriter(s, llm=llm)
    assert jobs.run_batch(engine, w, a, CopyOptions(max_words=8), "test/a") == (0, 0)
    assert all(i.status == "pending" and i.worker_id == "test/b" for i in _items(s, job.id))
    assert jobs.run_batch(engine, w, b, CopyOptions(max_words=8), "test/b") == (2, 0)
    assert queue.settle(engine, job.id, s.worker_lease_s) == "done"
    final = jobs.get_job(job.id, settings=s)
    assert final.status == "done" and (final.done, final.failed, final.pending) == (2, 0, 0)
    assert set(copies_per_product(s, job.id).values()) == {1}  # each product written once
    assert len(llm.batches) == 1  # b found a's texts stored: no second model call


def test_an_item_that_keeps_killing_its_workers_fails(db_settings: Settings) -> None:
    s = db_settings.model_copy(update={"worker_max_attempts": 2, "copy_queue": "database"})
    job = jobs.create_job("title", category="Cycling", limit=1, settings=s)
    for me in ("test/a", "test/b"):
        assert _claim(s, me, job.id) is not None
        _age_claims(s, me)
    assert _claim(s, "test/c", job.id) is None
    [item] = _items(s, job.id)
    assert item.status == "failed" and "abandoned" in item.error and item.attempts == 2
    assert queue.settle(get_engine(s.db_url), job.id, s.worker_lease_s) == "done"
    assert jobs.get_job(job.id, settings=s).failed == 1


def test_a_clean_release_gives_items_back_uncounted(pg: Settings) -> None:
    job = jobs.create_job("title", category="Cycling", limit=3, batch_size=3, settings=pg)
    assert _claim(pg, "test/a") is not None
    assert queue.release(get_engine(pg.db_url), "test/a") == 3
    assert all(i.worker_id is None and i.attempts == 0 for i in _items(pg, job.id))
    again = _claim(pg, "test/b")
    assert again is not None and len(again.items) == 3


def test_a_model_that_is_down_gives_the_batch_back_uncounted(pg: Settings) -> None:
    """An LLMError says nothing about the products: the worker returns them to the queue
    (attempts unchanged), and the next worker with a model writes them."""
    job = jobs.create_job("title", category="Cycling", limit=2, batch_size=2, settings=pg)
    down = FakeLLM(pg, error=LLMError("connection refused"))
    w = Worker(pg, lambda: CopyWriter(pg, llm=down), concurrency=1)
    assert w.run_once(CopyWriter(pg, llm=down)) is True
    items = _items(pg, job.id)
    assert all(i.status == "pending" and i.worker_id is None and i.attempts == 0 for i in items)
    up = Worker(pg, lambda: CopyWriter(pg, llm=FakeLLM(pg, writes_names())), concurrency=1)
    assert up.run_once(CopyWriter(pg, llm=FakeLLM(pg, writes_names()))) is True
    assert up.run_once(CopyWriter(pg, llm=FakeLLM(pg, writes_names()))) is False
    assert jobs.get_job(job.id, settings=pg).status == "done" and up.done == 2


def test_cancel_waits_for_the_batches_in_flight(pg: Settings) -> None:
    engine = get_engine(pg.db_url)
    job = jobs.create_job("title", category="Cycling", limit=6, batch_size=2, settings=pg)
    a = _claim(pg, "test/a")
    assert a is not None
    asked = jobs.cancel_job(job.id, settings=pg)
    assert asked.status == "running" and asked.cancel_requested  # a live worker holds a batch
    assert _claim(pg, "test/b") is None  # no batch starts after the cancel
    w = CopyWriter(pg, llm=FakeLLM(pg, writes_names()))
    assert jobs.run_batch(engine, w, a, CopyOptions(), "test/a") == (2, 0)
    assert queue.settle(engine, job.id, pg.worker_lease_s) == "cancelled"
    final = jobs.get_job(job.id, settings=pg)
    assert final.status == "cancelled" and (final.done, final.pending) == (2, 4)


def test_the_api_runs_jobs_on_its_worker_and_a_restart_resumes_them(pg: Settings) -> None:
    """On PostgreSQL the Application's job runner is a queue worker: a job submitted through
    it is written by it; stopped mid-job (the API shutting down) it gives its items back, and
    the next start-up finds the job and finishes it. Progress is read from the items."""
    slow = FakeLLM(pg, writes_names(), delay_s=1.0)
    first = Application(pg, writer_llm=slow)
    started = first.start_copy_job("title", CopyOptions(max_words=8), category="Running",
                                   limit=6, batch_size=2)  # fmt: skip
    assert started.queued and started.job.total == 6
    job_id = started.job.id
    _wait(lambda: first.get_copy_job(job_id).done >= 2, 120, "the API's worker's first batch")
    first.close(timeout_s=0.0)  # shutting down while a batch is in flight
    left = first.get_copy_job(job_id)
    assert left.status == "running" and left.pending >= 2
    assert all(i.worker_id is None for i in _items(pg, job_id) if i.status == "pending")

    second = Application(pg, writer_llm=FakeLLM(pg, writes_names()))
    assert second.resume_copy_jobs() == [job_id]
    _wait(lambda: second.get_copy_job(job_id).status == "done", 120, "the resumed job")
    second.close()
    final = second.get_copy_job(job_id)
    assert (final.done, final.failed, final.pending) == (6, 0, 0)
    assert len(copies_per_product(pg, job_id)) == 6
    assert set(copies_per_product(pg, job_id).values()) == {1}


def test_a_worker_needs_the_database_queue(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "RECSMITH_DATA_DIR": str(tmp_path)}
    env.pop("RECSMITH_DATABASE_URL", None)
    res = subprocess.run([str(Path(sys.executable).parent / "recsmith"), "worker"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert "PostgreSQL" in res.stdout + res.stderr and "Traceback" not in res.stderr


# -- worker processes ------------------------------------------------------------------------
class Proc:
    """A tests/copy/queue_worker.py process."""

    def __init__(self, s: Settings, tmp: Path, name: str, delay_s: float) -> None:
        self.log = tmp / f"{name}.written"
        self.out = tmp / f"{name}.out"
        env = {
            **os.environ,
            "RECSMITH_DATABASE_URL": s.db_url,
            "RECSMITH_DATA_DIR": str(tmp / name),
            "RECSMITH_COPY_MAX_RETRIES": "0",
            "RECSMITH_WORKER_LEASE_S": str(LEASE_S),
            "RECSMITH_WORKER_POLL_S": "0.2",
            "RECSMITH_TEST_WORKER_LOG": str(self.log),
            "RECSMITH_TEST_WORKER_DELAY_S": str(delay_s),
        }
        self.fh = self.out.open("w")
        self.p = subprocess.Popen([sys.executable, "-m", "tests.copy.queue_worker"], cwd=REPO,
                                  env=env, stdout=self.fh, stderr=subprocess.STDOUT)  # fmt: skip

    @property
    def output(self) -> str:
        return self.out.read_text()

    def started(self) -> bool:
        assert self.p.poll() is None, self.output
        return "started" in self.output

    def written(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def holds(self, s: Settings, job_id: int) -> int:
        tag = f"/{self.p.pid}/"
        return sum(
            1 for i in _items(s, job_id) if i.status == "pending" and tag in (i.worker_id or "")
        )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout_s)
        finally:
            self.fh.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait(30)


def _spawn(procs: list[Proc], s: Settings, tmp: Path, n: int, delay_s: float) -> list[Proc]:
    new = [Proc(s, tmp, f"w{len(procs) + i}", delay_s) for i in range(n)]
    procs.extend(new)
    for p in new:
        _wait(p.started, 300, f"worker {p.p.pid} to start")
    return new


def _names(s: Settings, job_id: int) -> dict[str, str]:
    """product id -> the text the fake wrote for it (its name, spaces as in the log)."""
    ids = [i.product_id for i in _items(s, job_id)]
    products = CatalogStore(s.db_url).get_products(ids)
    return {pid: products[pid].title for pid in ids}


def _exactly_once(s: Settings, job_id: int) -> None:
    final = jobs.get_job(job_id, settings=s)
    assert final.status == "done", final
    assert (final.done, final.failed, final.pending) == (final.total, 0, 0)
    per_product = copies_per_product(s, job_id)
    assert len(per_product) == final.total and set(per_product.values()) == {1}
    assert all(i.status == "done" and i.copy_id for i in _items(s, job_id))


def test_two_worker_processes_share_a_job_without_overlap(
    pg: Settings, tmp_path: Path, procs: list[Proc]
) -> None:
    a, b = _spawn(procs, pg, tmp_path, 2, delay_s=0.5)
    job = jobs.create_job("title", CopyOptions(max_words=12), category="Coffee & Tea",
                          limit=16, batch_size=2, settings=pg)  # fmt: skip
    _wait(lambda: jobs.get_job(job.id, settings=pg).status == "done", 300, "the job")
    assert a.stop() == 0 and b.stop() == 0
    assert "stopped" in a.output and "stopped" in b.output
    _exactly_once(pg, job.id)
    wa, wb = a.written(), b.written()
    assert wa and wb  # both worked
    assert not set(wa) & set(wb)  # no product written by both
    assert len(wa) + len(wb) == 16  # and none twice by one
    by = {i.worker_id.split("/")[1] for i in _items(pg, job.id)}  # type: ignore[union-attr]
    assert by == {str(a.p.pid), str(b.p.pid)}


def test_a_killed_workers_items_are_retried_by_another(
    pg: Settings, tmp_path: Path, procs: list[Proc]
) -> None:
    a, b = _spawn(procs, pg, tmp_path, 2, delay_s=1.5)
    job = jobs.create_job("title", CopyOptions(max_words=12), category="Coffee & Tea",
                          limit=16, batch_size=2, settings=pg)  # fmt: skip
    _wait(lambda: a.written() and a.holds(pg, job.id) > 0, 300, "worker a mid-batch")
    held = {i.id for i in _items(pg, job.id)
            if i.status == "pending" and f"/{a.p.pid}/" in (i.worker_id or "")}  # fmt: skip
    assert held and a.stop(signal.SIGKILL) == -signal.SIGKILL
    _wait(lambda: jobs.get_job(job.id, settings=pg).status == "done", 300, "the job")
    assert b.stop() == 0
    _exactly_once(pg, job.id)
    retried = [i for i in _items(pg, job.id) if i.id in held]
    assert all(f"/{b.p.pid}/" in (i.worker_id or "") and i.attempts == 2 for i in retried)


def test_two_workers_killed_and_restarted_finish_the_job_exactly_once(
    pg: Settings, tmp_path: Path, procs: list[Proc]
) -> None:
    first = _spawn(procs, pg, tmp_path, 2, delay_s=1.0)
    job = jobs.create_job("title", CopyOptions(max_words=12), category="Kitchen",
                          limit=16, batch_size=2, settings=pg)  # fmt: skip
    _wait(lambda: all(p.written() and p.holds(pg, job.id) for p in first), 300,
          "both workers mid-batch")  # fmt: skip
    for p in first:
        assert p.stop(signal.SIGKILL) == -signal.SIGKILL
    mid = jobs.get_job(job.id, settings=pg)
    assert mid.status == "running" and mid.pending > 0
    second = _spawn(procs, pg, tmp_path, 2, delay_s=0.2)
    _wait(lambda: jobs.get_job(job.id, settings=pg).status == "done", 300, "the job")
    for p in second:
        assert p.stop() == 0
    _exactly_once(pg, job.id)
    names = _names(pg, job.id)
    written = [n for p in first + second for n in p.written()]
    assert set(names.values()) <= set(written)  # every product was written by someone


def test_sigterm_gives_the_claims_back(pg: Settings, tmp_path: Path, procs: list[Proc]) -> None:
    [w] = _spawn(procs, pg, tmp_path, 1, delay_s=120.0)  # a batch that outlasts the grace
    job = jobs.create_job("title", category="Cycling", limit=4, batch_size=2, settings=pg)
    _wait(lambda: w.holds(pg, job.id) == 2, 120, "the worker's claim")
    t0 = time.monotonic()
    assert w.stop(signal.SIGTERM, timeout_s=60) == 0
    assert time.monotonic() - t0 < 30  # the 5 s grace, not the 120 s batch
    assert "stopped" in w.output
    items = _items(pg, job.id)
    assert all(i.status == "pending" and i.worker_id is None and i.attempts == 0 for i in items)


def test_workers_honour_cancel(pg: Settings, tmp_path: Path, procs: list[Proc]) -> None:
    [w] = _spawn(procs, pg, tmp_path, 1, delay_s=0.5)
    job = jobs.create_job("title", category="Gardening", limit=12, batch_size=1, settings=pg)
    _wait(lambda: jobs.get_job(job.id, settings=pg).done >= 2, 300, "two items written")
    jobs.cancel_job(job.id, settings=pg)
    _wait(lambda: jobs.get_job(job.id, settings=pg).status == "cancelled", 60, "the cancel")
    at_cancel = jobs.get_job(job.id, settings=pg)
    time.sleep(2.0)  # the worker goes on polling, and writes nothing more of this job
    after = jobs.get_job(job.id, settings=pg)
    assert after.status == "cancelled" and after.done == at_cancel.done and after.pending > 0
    assert w.stop() == 0


@pytest.mark.slow
def test_recsmith_worker_writes_a_job_with_the_real_model(
    pg: Settings, tmp_path: Path, model_path: Path
) -> None:
    """`recsmith worker` itself: the tiny model in-process, a job of two products, SIGTERM."""
    env = {
        **os.environ,
        "RECSMITH_DATABASE_URL": pg.db_url,
        "RECSMITH_DATA_DIR": str(tmp_path),
        "RECSMITH_LLM_MODEL": str(model_path),
        "RECSMITH_LLM_THREADS": "1",
        "RECSMITH_COPY_MAX_RETRIES": "0",
        "RECSMITH_WORKER_POLL_S": "0.2",
    }
    out = (tmp_path / "worker.out").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "recsmith"), "worker"], env=env,
                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    try:
        job = jobs.create_job("title", CopyOptions(max_words=8), category="Cycling", limit=2,
                              batch_size=1, settings=pg)  # fmt: skip
        _wait(lambda: jobs.get_job(job.id, settings=pg).status != "running", 900, "the job")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    text = (tmp_path / "worker.out").read_text()
    assert "stopped: 2 batches" in text, text
    final = jobs.get_job(job.id, settings=pg)
    assert final.status == "done" and final.done + final.failed == 2
    assert set(copies_per_product(pg, job.id).values()) == {1}
