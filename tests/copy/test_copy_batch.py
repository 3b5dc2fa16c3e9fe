"""Batch jobs: one generate call per batch, resumable after a crash or a kill, cancellable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.config import Settings
from service.copy import batch as jobs
from service.copy.tables import CopyJobItemRow
from service.copy.tasks import CopyOptions
from service.copy.writer import CopyWriter
from service.db import get_engine, session_scope
from tests.copy.conftest import REPO, copies_per_product
from tests.fakes import FakeLLM


class Crash(RuntimeError):
    pass


def test_crashed_job_resumes_and_does_every_product_once(
    db_settings: Settings, llm: FakeLLM
) -> None:
    s = db_settings.model_copy(update={"copy_max_retries": 0})
    w = CopyWriter(s, llm=llm)
    opts = CopyOptions(max_words=8)
    job = jobs.create_job("title", opts, category="Coffee & Tea", limit=4, batch_size=2, settings=s)
    assert job.total == 4 and job.status == "running" and job.pending == 4

    def crash_after_first_batch(status: jobs.JobStatus) -> None:
        raise Crash("killed after the first batch")

    with pytest.raises(Crash):
        jobs.run_job(job.id, writer=w, settings=s, on_batch=crash_after_first_batch)
    after_crash = jobs.get_job(job.id, settings=s)
    assert after_crash.status == "failed" and "killed" in after_crash.error
    assert after_crash.done + after_crash.failed == 2 and after_crash.pending == 2
    assert llm.batches == [2]  # one generate call for the batch of two

    # Re-running the same command finds the job and resumes it.
    assert jobs.find_job("title", opts, "Coffee & Tea", 4, settings=s).id == job.id
    llm.reset()
    seen: list[int] = []
    final = jobs.run_job(
        job.id, writer=w, settings=s, on_batch=lambda st: seen.append(st.done + st.failed)
    )
    assert final.status == "done" and final.pending == 0
    assert final.done + final.failed == 4 and seen == [4]
    assert llm.batches == [2]  # only the two pending products were written
    per_product = copies_per_product(s, job.id)
    assert len(per_product) == 4 and set(per_product.values()) == {1}
    assert jobs.item_counts(job.id, settings=s).get("pending", 0) == 0


def test_cancel_stops_before_the_next_batch(db_settings: Settings, llm: FakeLLM) -> None:
    s = db_settings.model_copy(update={"copy_max_retries": 0})
    w = CopyWriter(s, llm=llm)
    job = jobs.create_job(
        "title",
        CopyOptions(max_words=6),
        category="Coffee & Tea",
        limit=4,
        batch_size=1,
        settings=s,
    )
    # The API's cancel, arriving while the job runs (here: right after its first batch).
    final = jobs.run_job(
        job.id, writer=w, settings=s, on_batch=lambda st: jobs.cancel_job(st.id, settings=s)
    )
    assert final.status == "cancelled" and final.done + final.failed == 1 and final.pending == 3
    assert llm.batches == [1]
    # A job nobody runs is cancelled at once; a finished one stays finished.
    idle = jobs.create_job("summary", CopyOptions(), category="Kitchen", limit=1, settings=s)
    assert jobs.cancel_job(idle.id, settings=s).status == "cancelled"
    with pytest.raises(jobs.JobNotFound):
        jobs.cancel_job(999_999, settings=s)


def test_unknown_task_and_empty_selection(db_settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown batch task"):
        jobs.create_job("poem", settings=db_settings)
    empty = jobs.create_job("title", category="No Such Category", settings=db_settings)
    assert empty.total == 0 and empty.status == "done"


def _job_progress(settings: Settings, job_id: int) -> int:
    with session_scope(get_engine(settings.db_url)) as s:
        return (
            s.scalar(
                select(func.count()).where(
                    CopyJobItemRow.job_id == job_id, CopyJobItemRow.status != "pending"
                )
            )
            or 0
        )


def _cli(data_dir: Path, model: str, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "RECSMITH_DATA_DIR": str(data_dir),
        "RECSMITH_LLM_MODEL": model,
        "RECSMITH_LLM_THREADS": "1",
        "RECSMITH_COPY_MAX_RETRIES": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "service.copy.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_cli_batch_killed_with_sigkill_resumes(
    settings: Settings, catalog, model_path: Path
) -> None:  # noqa: ANN001
    """The real thing: `recsmith copy batch` in a subprocess, SIGKILLed as soon as its
    first batch commits; the same command run again finishes the job, every product once."""
    args = ["batch", "--task", "title", "--category", "Kitchen", "--limit", "3",
            "--batch-size", "1", "--max-words", "7"]  # fmt: skip
    proc = _cli(settings.data_dir, str(model_path), *args)
    job_id = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = jobs.find_job(
                "title", CopyOptions(max_words=7), "Kitchen", 3, settings=settings
            )
            if found:
                job_id = found.id
                if _job_progress(settings, job_id) >= 1:
                    break
            time.sleep(0.2)
        assert job_id is not None and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = jobs.get_job(job_id, settings=settings)
    assert status.status == "running" and 1 <= status.done + status.failed < 3  # killed mid-way

    again = _cli(settings.data_dir, str(model_path), *args)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out
    assert f"resuming job {job_id}" in out
    final = jobs.get_job(job_id, settings=settings)
    assert final.status == "done" and final.done + final.failed == 3
    per_product = copies_per_product(settings, job_id)
    assert len(per_product) == 3 and set(per_product.values()) == {1}


def test_cli_unknown_product_exits_non_zero(settings: Settings, catalog, model_path: Path) -> None:  # noqa: ANN001
    proc = _cli(
        settings.data_dir, str(model_path), "generate", "--task", "summary", "--product", "nope-42"
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2  # bad input (service/cli_support.py)
    assert "unknown product id" in out and "nope-42" in out


def test_start_job_runs_in_the_background_and_cancels(db_settings: Settings, llm: FakeLLM) -> None:
    """What the API does: start a job on a thread, poll it, cancel it."""
    s = db_settings.model_copy(update={"copy_max_retries": 0})
    w = CopyWriter(s, llm=llm)
    started = jobs.start_job(
        "title", CopyOptions(max_words=5), category="Kitchen", limit=3, batch_size=1,
        settings=s, writer=w,
    )  # fmt: skip
    assert started.status == "running" and started.total == 3
    assert jobs.cancel_job(started.id, settings=s).cancel_requested
    deadline = time.monotonic() + 600
    while (st := jobs.get_job(started.id, settings=s)).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert st.status == "cancelled" and st.done + st.failed <= 1 and st.pending >= 2
