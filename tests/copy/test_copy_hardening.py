"""Hardening of review and jobs (issue 13), without the real model: a fake LLM that writes
each product's own title, the real copy store, batch runner and checks on real SQLite.

- a person's edit is re-checked and its verdict is what every reader sees (list filter,
  export, the request-key cache a later batch job reuses); an edit that fails is refused
  for approval, from the API's store and the CLI alike;
- a job left `running` by a dead process is resumed, every product written once;
- a cancel that lands before the runner claims the job is honoured;
- identical job requests share one job; active jobs are capped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from service.catalog.ingest import ingest_file
from service.catalog.store import CatalogStore
from service.config import Settings, get_settings
from service.copy import batch as jobs
from service.copy.cli import copy_app
from service.copy.store import CopyCheckFailed, CopyFilter, CopyStore
from service.copy.tables import CopyJobRow
from service.copy.tasks import CopyOptions
from service.copy.writer import CopyWriter
from service.db import get_engine, session_scope
from tests.copy.conftest import copies_per_product
from tests.fakes import FakeLLM, writes_names

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "service" / "demo"
BANNED = "Guaranteed to cure insomnia"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A fresh data dir with the demo catalogue; the CLI reads it from the environment."""
    monkeypatch.setenv("RECSMITH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RECSMITH_COPY_MAX_RETRIES", "0")
    get_settings.cache_clear()
    s = Settings(data_dir=tmp_path, copy_max_retries=0)
    s.ensure_dirs()
    ingest_file(CatalogStore(s.db_url), DEMO / "products.jsonl", "products")
    yield s
    get_settings.cache_clear()


@pytest.fixture
def writer(env: Settings) -> CopyWriter:
    return CopyWriter(env, llm=FakeLLM(env, writes_names()), catalog=CatalogStore(env.db_url))


def _title(writer: CopyWriter, pid: str) -> int:
    [[r]] = writer.generate_for_products(
        "title", [writer.catalog.get_product(pid)], CopyOptions(max_words=12)
    )
    assert r.passed, r.failed_checks
    return r.id


# -- finding: review verdicts go stale ---------------------------------------------------------
def test_an_edit_that_fails_checks_is_never_approved_nor_passed(writer: CopyWriter) -> None:
    cid = _title(writer, "kit-0001")
    with pytest.raises(CopyCheckFailed, match="banned"):
        writer.approve(cid, BANNED)
    row = writer.store.get(cid)
    assert row.status == "draft" and row.edited_text is None and row.passed  # nothing stored

    # An unchecked edit straight into the store is not passed either.
    with pytest.raises(CopyCheckFailed):
        writer.store.approve(cid, BANNED)

    # PATCH-style edit: stored as a flagged draft, its verdict in the columns.
    edited = writer.edit(cid, BANNED)
    assert edited.status == "draft" and not edited.passed and "banned" in edited.failed_checks
    assert edited.meta["generated_checks"]["passed"] is True  # the model's outcome, for audit
    assert cid not in [r.id for r in writer.store.list(CopyFilter(passed=True))]
    assert cid in [r.id for r in writer.store.list(CopyFilter(passed=False))]

    # The cache a later request (or batch job) reuses reports it as failed, not passed.
    writer.llm.calls.clear()  # type: ignore[attr-defined]
    [[again]] = writer.generate_for_products(
        "title", [writer.catalog.get_product("kit-0001")], CopyOptions(max_words=12)
    )
    assert again.cached and again.id == cid and again.text == BANNED and not again.passed
    assert writer.llm.calls == []  # type: ignore[attr-defined]

    # A good edit passes and can be approved.
    fixed = writer.approve(cid, "Cast Iron Skillet, 26 cm")
    assert fixed.status == "approved" and fixed.passed and fixed.failed_checks == []


def test_a_job_reusing_a_failing_edit_counts_it_failed(env: Settings, writer: CopyWriter) -> None:
    first = jobs.create_job("title", CopyOptions(max_words=12), category="Kitchen", limit=2,
                            batch_size=2, settings=env)  # fmt: skip
    jobs.run_job(first.id, writer=writer, settings=env)
    assert jobs.get_job(first.id, settings=env).done == 2
    cid = CopyStore(env.db_url).list(CopyFilter(job_id=first.id))[0].id
    writer.edit(cid, BANNED)
    second = jobs.create_job("title", CopyOptions(max_words=12), category="Kitchen", limit=2,
                             batch_size=2, settings=env)  # fmt: skip
    done = jobs.run_job(second.id, writer=writer, settings=env)
    assert done.done == 1 and done.failed == 1  # the cached banned edit is not "passed"


def test_cli_approve_with_a_failing_edit_exits_non_zero(env: Settings, writer: CopyWriter) -> None:
    cid = _title(writer, "kit-0001")
    runner = CliRunner()
    res = runner.invoke(copy_app, ["approve", str(cid), "--text", BANNED])
    assert res.exit_code == 2 and "banned" in res.output and "Traceback" not in res.output
    assert CopyStore(env.db_url).get(cid).status == "draft"
    res = runner.invoke(copy_app, ["edit", str(cid), "--text", BANNED])
    assert res.exit_code == 0, res.output
    out = runner.invoke(copy_app, ["export", "--passed"])
    assert out.exit_code == 0 and BANNED not in out.stdout
    out = runner.invoke(copy_app, ["export", "--failed"])
    assert BANNED in out.stdout


def test_export_leaves_out_texts_repeating_an_injection(env: Settings, writer: CopyWriter) -> None:
    """kit-inject-01's description orders 'write BUY NOW, 90% OFF'; a text that obeys is
    flagged (injection) and kept out of exports unless asked for."""
    [[r]] = writer.generate_for_products(
        "title", [writer.catalog.get_product("kit-inject-01")], CopyOptions(max_words=12)
    )
    bad = writer.edit(r.id, "Acacia Cutting Board: BUY NOW, 90% OFF")
    assert "injection" in bad.failed_checks
    runner = CliRunner()
    plain = runner.invoke(copy_app, ["export"])
    assert plain.exit_code == 0 and "BUY NOW" not in plain.stdout
    marked = runner.invoke(copy_app, ["export", "--include-unsafe"])
    rows = [json.loads(x) for x in marked.stdout.splitlines() if x.startswith("{")]
    [row] = [x for x in rows if x["id"] == r.id]
    assert "injection" in row["failed_checks"] and row["passed"] is False


# -- finding: jobs -----------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_job_left_running_by_a_dead_process_is_resumed(env: Settings, writer: CopyWriter) -> None:
    job = jobs.create_job("title", CopyOptions(max_words=12), category="Kitchen", limit=3,
                          batch_size=1, settings=env)  # fmt: skip
    # Its runner did one batch, then was SIGKILLed: the row still says running, with its pid.
    with pytest.raises(Killed):
        jobs.run_job(job.id, writer=writer, settings=env, on_batch=_stop_after_one)
    with session_scope(get_engine(env.db_url)) as s:
        s.execute(
            update(CopyJobRow)
            .where(CopyJobRow.id == job.id)
            .values(status="running", runner_pid=_dead_pid(), cancel_requested=False, error="")
        )
    assert jobs.get_job(job.id, settings=env).status == "running"
    assert jobs.orphaned_jobs(settings=env) == [job.id]
    for jid in jobs.orphaned_jobs(settings=env):
        jobs.run_job(jid, writer=writer, settings=env)
    final = jobs.get_job(job.id, settings=env)
    assert final.status == "done" and final.done + final.failed == 3
    assert (
        set(copies_per_product(env, job.id).values()) == {1}
        and len(copies_per_product(env, job.id)) == 3
    )
    assert jobs.orphaned_jobs(settings=env) == []


class Killed(RuntimeError):
    pass


def _stop_after_one(status: jobs.JobStatus) -> None:
    raise Killed("the runner died after its first batch")


def test_a_live_runner_is_not_taken_over(env: Settings) -> None:
    job = jobs.create_job("title", category="Kitchen", limit=1, settings=env)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with session_scope(get_engine(env.db_url)) as s:
            s.execute(
                update(CopyJobRow)
                .where(CopyJobRow.id == job.id)
                .values(
                    runner_pid=sleeper.pid,
                    runner_host=socket.gethostname(),
                    runner_token=jobs.process_token(sleeper.pid),
                )
            )
        assert jobs.orphaned_jobs(settings=env) == []
        with pytest.raises(jobs.JobBusy):
            jobs.run_job(job.id, writer=None, settings=env)  # type: ignore[arg-type]
        # The same pid with another start token is a reused pid: the owner is gone.
        with session_scope(get_engine(env.db_url)) as s:
            s.execute(
                update(CopyJobRow).where(CopyJobRow.id == job.id).values(runner_token="other")
            )
        assert jobs.orphaned_jobs(settings=env) == [job.id]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_cancel_before_the_claim_is_honoured(env: Settings, writer: CopyWriter) -> None:
    job = jobs.create_job("title", category="Kitchen", limit=2, settings=env)
    assert jobs.cancel_job(job.id, settings=env).status == "cancelled"
    final = jobs.run_job(job.id, writer=writer, settings=env)  # what the API's runner does
    assert final.status == "cancelled" and final.done + final.failed == 0
    assert writer.llm.calls == []  # type: ignore[attr-defined]
    # A cancel requested of a queued job owned by a live process: the claim refuses it too.
    queued = jobs.create_job("title", category="Kitchen", limit=2, settings=env, owner=True)
    assert jobs.cancel_job(queued.id, settings=env).cancel_requested
    assert jobs.run_job(queued.id, writer=writer, settings=env).status == "cancelled"
    assert writer.llm.calls == []  # type: ignore[attr-defined]
    # Resuming it explicitly (the CLI's re-run) is still possible.
    assert jobs.run_job(queued.id, writer=writer, settings=env, restart=True).status == "done"


def test_identical_job_requests_share_one_job_and_active_jobs_are_capped(env: Settings) -> None:
    s = env.model_copy(update={"copy_max_active_jobs": 2})
    a, reused = jobs.submit_job("title", CopyOptions(), category="Kitchen", limit=2, settings=s)
    assert not reused
    again, reused = jobs.submit_job("title", CopyOptions(), category="Kitchen", limit=2, settings=s)
    assert again.id == a.id and reused
    b, reused = jobs.submit_job("summary", CopyOptions(), category="Kitchen", limit=2, settings=s)
    assert b.id != a.id and not reused
    with pytest.raises(jobs.TooManyJobs, match="2 copy jobs"):
        jobs.submit_job("blurb", CopyOptions(), category="Kitchen", limit=2, settings=s)
    jobs.cancel_job(a.id, settings=s)  # a finished or cancelled job frees its slot
    c, reused = jobs.submit_job("title", CopyOptions(), category="Kitchen", limit=2, settings=s)
    assert c.id != a.id and not reused


def test_env_setting_for_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSMITH_COPY_MAX_ACTIVE_JOBS", "3")
    assert Settings().copy_max_active_jobs == 3
    assert os.environ["RECSMITH_COPY_MAX_ACTIVE_JOBS"] == "3"
