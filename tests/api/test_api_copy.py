"""Copy over HTTP with the real model: write, review (edit, approve, reject), list, export,
headlines with fit scores, and batch jobs with progress and cancel."""

from __future__ import annotations

import csv
import io
import json
import time

from fastapi.testclient import TestClient

from service.api.routes.copy import spreadsheet_safe


def test_write_review_list_and_export(client: TestClient) -> None:
    r = client.post("/v1/copy/title", json={"product_ids": ["kit-0001"]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["task"] == "title" and len(out["results"]) == 1
    first = out["results"][0]
    assert first["product_id"] == "kit-0001"
    # The tiny test model's title may pass or be refused; either way the stored verdict is the
    # checks' verdict (a refused text is stored as rejected with what failed), and it carries
    # the model and template that wrote it.
    assert set(first["checks"])  # every text is checked
    failed = [name for name, c in first["checks"].items() if not c["ok"]]
    if first["status"] == "draft":
        assert first["passed"] and first["text"] and not failed
    else:
        assert first["status"] == "rejected" and first["refused"] and not first["passed"]
        assert failed and set(first["failed_checks"]) <= set(failed) | {"format"}
    assert first["generated_text"] and first["model_id"] and first["template_version"]

    # The same request again is served from the store, without a model call.
    again = client.post("/v1/copy/title", json={"product_ids": ["kit-0001"]}).json()
    assert again["results"][0]["id"] == first["id"] and again["results"][0]["cached"] is True

    cid = first["id"]
    edited = client.patch(f"/v1/copy/{cid}", json={"text": "Cast Iron Skillet, 26 cm"})
    assert edited.status_code == 200, edited.text
    assert edited.json()["text"] == "Cast Iron Skillet, 26 cm"
    assert edited.json()["edited_text"] == "Cast Iron Skillet, 26 cm"

    approved = client.post(f"/v1/copy/{cid}/approve").json()
    assert approved["status"] == "approved"
    assert client.get(f"/v1/copy/{cid}").json()["status"] == "approved"

    listed = client.get("/v1/copy", params={"status": "approved", "product_id": "kit-0001"}).json()
    assert cid in [i["id"] for i in listed["items"]]

    jsonl = client.get("/v1/copy/export", params={"format": "jsonl", "status": "approved"})
    assert jsonl.status_code == 200
    assert jsonl.headers["content-disposition"].startswith("attachment;")
    rows = [json.loads(line) for line in jsonl.text.splitlines() if line.strip()]
    assert any(r["id"] == cid and r["text"] == "Cast Iron Skillet, 26 cm" for r in rows)

    csv_r = client.get("/v1/copy/export", params={"format": "csv", "task": "title"})
    assert csv_r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(csv_r.text)))
    assert any(row["id"] == str(cid) for row in table)

    rejected = client.post(f"/v1/copy/{cid}/reject", json={"reason": "too plain"}).json()
    assert rejected["status"] == "rejected" and rejected["note"] == "too plain"


def test_copy_errors_name_the_field(client: TestClient) -> None:
    r = client.post("/v1/copy/poem", json={"product_ids": ["kit-0001"]})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "task"
    r = client.post("/v1/copy/title", json={"product_ids": ["kit-0001", "zz-none"]})
    assert r.status_code == 404
    assert r.json()["error"]["fields"] == [
        {"field": "product_ids[1]", "problem": "unknown product id"}
    ]
    r = client.post("/v1/copy/blurb", json={"product_ids": ["kit-0001"] * 3, "variants": 8})
    assert r.status_code == 422 and "at most 20" in r.json()["error"]["message"]
    r = client.post("/v1/copy/blurb", json={"product_ids": ["kit-0001"], "seed": 2**40})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "seed"
    r = client.post("/v1/copy/blurb", json={"product_ids": ["kit-0001"], "language": "fr"})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "language"
    assert client.get("/v1/copy/999999").status_code == 404
    assert client.post("/v1/copy/999999/approve").status_code == 404
    r = client.patch("/v1/copy/999999", json={"text": "x"})
    assert r.status_code == 404 and r.json()["error"]["fields"][0]["field"] == "copy_id"
    r = client.patch("/v1/copy/1", json={"text": "   "})
    assert r.status_code == 422
    assert client.get("/v1/copy", params={"status": "maybe"}).status_code == 422
    assert client.get("/v1/copy/export", params={"format": "xml"}).status_code == 422
    assert client.get("/v1/copy/jobs/999999").status_code == 404
    assert client.post("/v1/copy/jobs/999999/cancel").status_code == 404
    r = client.post("/v1/copy/jobs", json={"task": "headline"})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "task"


def test_batch_job_runs_with_progress_and_cancel(client: TestClient) -> None:
    r = client.post(
        "/v1/copy/jobs",
        json={"task": "title", "category": "Coffee & Tea", "limit": 2, "batch_size": 1},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["total"] == 2 and job["status"] == "running" and job["queued"] is True
    seen_progress = {job["progress"]}
    end = time.monotonic() + 900
    while time.monotonic() < end:
        job = client.get(f"/v1/copy/jobs/{job['id']}").json()
        seen_progress.add(job["progress"])
        if job["status"] != "running":
            break
        time.sleep(0.5)
    assert job["status"] == "done", job
    assert job["done"] + job["failed"] == 2 and job["progress"] == 1.0
    texts = client.get("/v1/copy", params={"job_id": job["id"]}).json()["items"]
    assert len(texts) == 2 and {t["task"] for t in texts} == {"title"}
    assert job["id"] in [j["id"] for j in client.get("/v1/copy/jobs").json()]

    # A big job, cancelled: it stops (at once if it had not started, else after one batch).
    big = client.post("/v1/copy/jobs", json={"task": "summary", "batch_size": 1}).json()
    cancelled = client.post(f"/v1/copy/jobs/{big['id']}/cancel").json()
    assert cancelled["cancel_requested"] is True
    end = time.monotonic() + 900
    while cancelled["status"] == "running" and time.monotonic() < end:
        time.sleep(0.5)
        cancelled = client.get(f"/v1/copy/jobs/{big['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["done"] + cancelled["failed"] < cancelled["total"]


def test_recommendations_with_a_headline_and_fit_scores(client: TestClient) -> None:
    r = client.post("/v1/recommendations", json={"user_id": "u-erin", "k": 4, "headline": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "headline" in body["stages"], body
    head = body["headline"]
    assert head["text"] and head["model_id"] and head["template"]
    ids = [i["product_id"] for i in body["items"]]
    assert set(head["fit"]) == set(ids)
    assert all(-1.0 <= i["fit"] <= 1.0 for i in body["items"])

    direct = client.post(
        "/v1/copy/headline", json={"product_ids": ids[:2], "interests": ["hiking"]}
    ).json()
    assert direct["headline"]["task"] == "headline"
    assert [i["product_id"] for i in direct["items"]] == ids[:2]


def test_csv_export_neutralises_formulas() -> None:
    assert spreadsheet_safe('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
    assert spreadsheet_safe("A fine skillet") == "A fine skillet"
    assert spreadsheet_safe(3) == 3
