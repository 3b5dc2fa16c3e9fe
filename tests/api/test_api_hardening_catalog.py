"""Catalogue hardening over HTTP (issue 13): a deeply nested product is refused with a 422
naming `attributes` and cannot break catalogue reads; bad `ts`/`value` are 422s, never 500s;
parallel upserts and appends with overlapping ids store each row once, count it exactly, and
never answer 5xx. A real uvicorn server, its own copy of the demo data, no model calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from service.api.app import create_app
from service.db import get_engine
from tests.api.support import AUTH, LiveServer, app_settings, free_port, fresh_copy


def nested(levels: int) -> dict[str, Any]:
    d: Any = 1
    for _ in range(levels):
        d = {"k": d}
    return d


def all_ids(http: httpx.Client) -> list[str]:
    """Every page of the catalogue listing (each page must serialise)."""
    ids: list[str] = []
    offset: int | None = 0
    while offset is not None:
        r = http.get("/v1/products", params={"limit": 200, "offset": offset})
        assert r.status_code == 200, r.text
        ids += [p["id"] for p in r.json()["items"]]
        offset = r.json()["next_offset"]
    return ids


@pytest.fixture(scope="module")
def server(
    demo_dir: Path, llm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Its own data (these tests write products); the LLM is a server that is not there,
    so nothing here waits for a model."""
    data = fresh_copy(demo_dir, tmp_path_factory, "catalog-hardening")
    s = app_settings(
        data,
        llm_path,
        llm_backend="openai",
        llm_base_url=f"http://127.0.0.1:{free_port()}/v1",
        llm_max_retries=0,
        llm_timeout_s=2.0,
    )
    with LiveServer(create_app(s)) as srv:
        srv.db_url = s.db_url  # type: ignore[attr-defined]
        yield srv


@pytest.fixture()
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
        yield c


def test_deep_product_is_refused_and_reads_stay_whole(http: httpx.Client) -> None:
    good = {"id": "hard-ok", "title": "Plain kettle", "attributes": {"size": {"l": 1.2}}}
    deep = {"id": "hard-deep", "title": "Deep", "attributes": nested(300)}
    r = http.post("/v1/products", json={"products": [good, deep]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["inserted"] == 1
    (err,) = body["errors"]
    assert err["index"] == 1 and err["id"] == "hard-deep"
    assert err["fields"][0]["field"] == "attributes"
    assert "nested more than 8 levels" in err["fields"][0]["problem"]

    for attributes in (nested(300), '{"k":' * 50_000 + "1" + "}" * 50_000):
        r = http.post("/v1/products", json={"products": [{**deep, "attributes": attributes}]})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["fields"][0]["field"] == "products[0].attributes"
    assert http.get("/v1/products/hard-deep").status_code == 404

    assert http.get("/v1/products/hard-ok").status_code == 200
    assert "hard-ok" in all_ids(http)
    assert http.get("/v1/products", params={"q": "kettle", "limit": 50}).status_code == 200


def test_a_deep_row_stored_by_an_older_version_is_still_served(
    server: LiveServer, http: httpx.Client
) -> None:
    r = http.post("/v1/products", json={"products": [{"id": "old-deep", "title": "Old"}]})
    assert r.status_code == 200, r.text
    with get_engine(server.db_url).begin() as c:  # type: ignore[attr-defined]
        c.execute(
            text("UPDATE products SET attributes = :a WHERE id = 'old-deep'"),
            {"a": json.dumps(nested(300))},
        )
    r = http.get("/v1/products/old-deep")
    assert r.status_code == 200, r.text
    assert r.json()["attributes"] == {}
    assert "old-deep" in all_ids(http)


@pytest.mark.parametrize(
    ("raw_event", "field"),
    [
        ('"ts": 1e20', "ts"),
        ('"ts": -1e20', "ts"),
        ('"ts": "Infinity"', "ts"),
        ('"ts": 1e400', "ts"),
        ('"value": NaN', "value"),
        ('"value": 1e309', "value"),
    ],
)
def test_bad_ts_and_value_are_422(http: httpx.Client, raw_event: str, field: str) -> None:
    body = '{"interactions": [{"user_id": "u-x", "product_id": "hard-ok", ' + raw_event + "}]}"
    r = http.post("/v1/interactions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == f"interactions[0].{field}"


def test_parallel_upserts_and_appends_with_overlapping_ids(
    server: LiveServer, http: httpx.Client
) -> None:
    workers = 8
    ids = [f"race-{i}" for i in range(12)]
    before = http.get("/v1/products", params={"limit": 1}).json()["total"]

    def upsert(w: int) -> httpx.Response:
        mine = ids[w : w + 5]  # neighbours share 4 of 5 new ids
        items = [{"id": i, "title": f"Race item {i}", "category": "Race"} for i in mine]
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
            return c.post("/v1/products", json={"products": items})

    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(upsert, range(workers)))
    assert [a.status_code for a in answers] == [200] * workers, [a.text for a in answers]
    touched = {i for w in range(workers) for i in ids[w : w + 5]}
    assert sum(a.json()["inserted"] for a in answers) == len(touched)
    assert sum(a.json()["updated"] for a in answers) == 0
    after = http.get("/v1/products", params={"limit": 1}).json()["total"]
    assert after - before == len(touched)
    listed = http.get("/v1/products", params={"category": "Race", "limit": 100}).json()
    assert sorted(p["id"] for p in listed["items"]) == sorted(touched)

    def append(w: int) -> httpx.Response:
        events = [
            {"user_id": f"race-u{(w + k) % 3}", "product_id": ids[k % 12], "ts": 1.7e9 + k}
            for k in range(30)
        ]
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
            return c.post("/v1/interactions", json={"interactions": events})

    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(append, range(workers)))
    assert [a.status_code for a in answers] == [200] * workers, [a.text for a in answers]
    unique = {(f"race-u{(w + k) % 3}", k) for w in range(workers) for k in range(30)}
    assert sum(a.json()["added"] for a in answers) == len(unique)
