"""Copy review, jobs and export over HTTP after the issue-13 audit, on the real app (real
lifespan, SQLite, catalogue and encoder) with a fake title-writing model (no LLM load):

- approving with an edit that fails the checks is a 422 naming them; a PATCHed failing edit
  is `passed: false` in the list filter and the export;
- a job left `running` by a dead process is resumed by the API's start-up, each product once;
- an identical job request returns the job already queued (200); beyond the cap, 429.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api.app import create_app
from service.config import Settings
from service.copy import batch as jobs
from service.copy.tables import CopyJobRow
from service.copy.tasks import CopyOptions
from service.db import get_engine, session_scope
from tests.api.support import AUTH, app_settings, fresh_copy, quiesce
from tests.copy.test_copy_hardening import BANNED
from tests.fakes import FakeLLM, writes_names


def _settings(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory, **kw: object) -> Settings:
    # No model is loaded: the LLM backend points at a closed port; copy is written by a
    # FakeLLM writing each product's name.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return app_settings(
        fresh_copy(demo_dir, tmp_path_factory, "copy-hardening"),
        Path("unused"),
        llm_backend="openai",
        llm_base_url=f"http://127.0.0.1:{port}/v1",
        llm_max_retries=0,
        llm_timeout_s=2.0,
        **kw,
    )


@pytest.fixture
def hard_client(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Settings]]:
    s = _settings(demo_dir, tmp_path_factory, copy_max_active_jobs=2)
    # The copy writer and the job runner write with it.
    app = create_app(s, writer_llm=FakeLLM(s, writes_names()))
    with TestClient(app, headers=AUTH) as c:
        yield c, s
        quiesce(app, timeout_s=60)


def _wait(c: TestClient, job_id: int, timeout_s: float = 120) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        job = c.get(f"/v1/copy/jobs/{job_id}").json()
        if job["status"] != "running":
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running: {job}")


def test_a_failing_edit_is_refused_for_approval_and_never_exported_as_passed(
    hard_client: tuple[TestClient, Settings],
) -> None:
    c, _ = hard_client
    r = c.post("/v1/copy/title", json={"product_ids": ["kit-0001"], "max_words": 12})
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    assert first["passed"], first
    cid = first["id"]

    r = c.post(f"/v1/copy/{cid}/approve", json={"text": BANNED})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert "banned" in err["message"] and err["fields"][0]["field"] == "text"
    assert any(f["problem"].startswith("banned:") for f in err["fields"])
    assert c.get(f"/v1/copy/{cid}").json()["status"] == "draft"

    r = c.patch(f"/v1/copy/{cid}", json={"text": BANNED})
    assert r.status_code == 200 and r.json()["passed"] is False
    assert "banned" in r.json()["failed_checks"]
    passed = c.get("/v1/copy", params={"passed": "true"}).json()["items"]
    assert cid not in [i["id"] for i in passed]
    rows = [
        json.loads(x) for x in c.get("/v1/copy/export", params={"passed": "true"}).text.splitlines()
    ]
    assert cid not in [x["id"] for x in rows]
    everything = [json.loads(x) for x in c.get("/v1/copy/export").text.splitlines()]
    [row] = [x for x in everything if x["id"] == cid]
    assert row["passed"] is False and "banned" in row["failed_checks"]

    # The same request again: the cached text is the edit, reported as failed.
    again = c.post("/v1/copy/title", json={"product_ids": ["kit-0001"], "max_words": 12}).json()
    assert again["results"][0]["cached"] and again["results"][0]["passed"] is False


def test_identical_job_requests_share_a_job_and_active_jobs_are_capped(
    hard_client: tuple[TestClient, Settings],
) -> None:
    c, s = hard_client
    held: list[int] = []
    runner = c.app.state.application.jobs  # type: ignore[attr-defined]
    runner.submit = held.append  # jobs stay queued: the runner is busy elsewhere
    body = {"task": "title", "category": "Kitchen", "limit": 3, "batch_size": 1}
    a = c.post("/v1/copy/jobs", json=body)
    assert a.status_code == 202 and a.json()["queued"], a.text
    same = c.post("/v1/copy/jobs", json=body)
    assert same.status_code == 200 and same.json()["id"] == a.json()["id"]
    assert same.headers["location"].endswith(f"/v1/copy/jobs/{a.json()['id']}")
    b = c.post("/v1/copy/jobs", json={**body, "task": "blurb"})
    assert b.status_code == 202 and b.json()["id"] != a.json()["id"]
    over = c.post("/v1/copy/jobs", json={**body, "task": "summary"})
    assert over.status_code == 429, over.text
    assert "limit is 2" in over.json()["error"]["message"]
    assert held == [a.json()["id"], b.json()["id"]]
    # A cancelled job frees its slot (and the runner will not claim it).
    assert c.post(f"/v1/copy/jobs/{a.json()['id']}/cancel").json()["cancel_requested"]
    again = c.post("/v1/copy/jobs", json={**body, "task": "summary"})
    assert again.status_code == 202, again.text
    assert jobs.run_job(a.json()["id"], settings=s).status == "cancelled"


def test_start_up_resumes_a_job_a_dead_process_left_running(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    s = _settings(demo_dir, tmp_path_factory)
    job = jobs.create_job("title", CopyOptions(max_words=12), category="Kitchen", limit=3,
                          batch_size=1, settings=s)  # fmt: skip
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with session_scope(get_engine(s.db_url)) as db:
        db.execute(
            update(CopyJobRow)
            .where(CopyJobRow.id == job.id)
            .values(runner_pid=dead.pid, runner_host=socket.gethostname(), runner_token="1")
        )
    # The copy writer and the job runner write with it.
    app = create_app(s, writer_llm=FakeLLM(s, writes_names()))
    with TestClient(app, headers=AUTH) as c:
        final = _wait(c, job.id)
        texts = c.get("/v1/copy", params={"job_id": job.id}).json()["items"]
        quiesce(app, timeout_s=60)
    assert final["status"] == "done" and final["done"] + final["failed"] == 3, final
    products = [t["product_id"] for t in texts]
    assert len(products) == 3 and len(set(products)) == 3  # each product exactly once


@pytest.mark.parametrize(
    ("message", "answer", "reason"),
    [
        # Nothing grounded left after the checks: the templated answer, and why.
        ("cast iron skillet", "[1] is a luxurious 5 L skillet in red, perfect for women.",
         "answer: nothing the model wrote passed the checks"),
        # English to a Chinese question, on the retry too.
        ("推荐一款咖啡机", "[1] is a fine espresso maker.",
         "answer: not in the shopper's language"),
    ],
)  # fmt: skip
def test_a_templated_chat_answer_tells_the_client_why(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory, message: str, answer: str,
    reason: str,
) -> None:  # fmt: skip
    """Served at e6f9364 as "answer: model unavailable", which sends a client looking for an
    outage; the service's own verdict is a fixed phrase too, and says what happened."""
    s = _settings(demo_dir, tmp_path_factory)
    app = create_app(s, writer_llm=FakeLLM(s, answer))
    with TestClient(app, headers=AUTH) as c:
        body = c.post("/v1/assistant/chat", json={"message": message, "stream": False}).json()
        quiesce(app)
    assert body["degraded"] is True and body["degraded_reason"] == reason, body
    assert body["template"] == "assistant_fallback" and body["answer"]
