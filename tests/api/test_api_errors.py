"""Bad input on every route: a 4xx JSON error naming the field and the problem, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


def error_of(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"code", "message", "fields"}
    assert err["message"]
    return err


def fields_of(err: dict[str, Any]) -> set[str]:
    return {f["field"] for f in err["fields"]}


def assert_field(err: dict[str, Any], field: str, problem_part: str = "") -> None:
    match = [f for f in err["fields"] if f["field"] == field]
    assert match, f"{field} not named in {err['fields']}"
    if problem_part:
        assert any(problem_part.lower() in f["problem"].lower() for f in match), match


LONG = "x" * 1001

# (method, path, json body or None, query params, status, field, problem fragment)
CASES: list[tuple[str, str, Any, dict[str, Any] | None, int, str, str]] = [
    # products
    ("POST", "/v1/products", {}, None, 422, "products", "required"),
    ("POST", "/v1/products", {"products": []}, None, 422, "products", "at least 1"),
    ("POST", "/v1/products", {"products": "no"}, None, 422, "products", "list"),
    ("POST", "/v1/products", {"products": [{"id": "a b"}]}, None, 422, "products[0].id", "pattern"),
    ("POST", "/v1/products", {"products": [{"id": "p1"}]}, None, 422, "products[0].title", ""),
    ("POST", "/v1/products", {"products": ["p1"]}, None, 422, "products[0]", "dictionary"),
    ("POST", "/v1/products", {"products": [{}] * 1001}, None, 422, "products", "at most 1000"),
    ("POST", "/v1/products", {"products": [{"id": "p1", "title": "t"}], "x": 1}, None, 422, "x",
     "extra"),
    ("GET", "/v1/products", None, {"limit": 0}, 422, "limit", "greater than"),
    ("GET", "/v1/products", None, {"limit": 1000}, 422, "limit", "less than"),
    ("GET", "/v1/products", None, {"offset": -1}, 422, "offset", ""),
    ("GET", "/v1/products", None, {"limit": "many"}, 422, "limit", "integer"),
    ("GET", "/v1/products", None, {"q": "x" * 501}, 422, "q", "at most 500"),
    ("GET", "/v1/products", None, {"category": "c" * 129}, 422, "category", ""),
    ("GET", "/v1/products/bad%20id", None, None, 422, "product_id", "pattern"),
    ("GET", "/v1/products/nope-404", None, None, 404, "", ""),
    ("DELETE", "/v1/products/nope-404", None, None, 404, "", ""),
    ("DELETE", "/v1/products/bad%20id", None, None, 422, "product_id", ""),
    ("GET", "/v1/products/kit-0001/similar", None, {"k": 0}, 422, "k", ""),
    ("GET", "/v1/products/kit-0001/similar", None, {"k": 101}, 422, "k", "100"),
    ("GET", "/v1/products/nope-404/similar", None, None, 404, "", ""),
    ("GET", "/v1/products/kit-0001/similar", None, {"in_stock_only": "maybe"}, 422,
     "in_stock_only", "bool"),
    # interactions
    ("POST", "/v1/interactions", {"interactions": []}, None, 422, "interactions", ""),
    ("POST", "/v1/interactions",
     {"interactions": [{"user_id": "u1", "product_id": "kit-0001", "event": "like"}]}, None, 422,
     "interactions[0].event", ""),
    ("POST", "/v1/interactions",
     {"interactions": [{"user_id": "u 1", "product_id": "kit-0001"}]}, None, 422,
     "interactions[0].user_id", "pattern"),
    ("POST", "/v1/interactions",
     {"interactions": [{"user_id": "u1", "product_id": "kit-0001", "ts": "yesterday"}]}, None,
     422, "interactions[0].ts", ""),
    ("POST", "/v1/interactions", {"interactions": [{"user_id": "u1", "product_id": "zz-none"}]},
     None, 422, "interactions[0].product_id", "unknown"),
    # recommendations
    ("POST", "/v1/recommendations", {}, None, 422, "body", "at least one"),
    ("POST", "/v1/recommendations", {"query": "   "}, None, 422, "body", "at least one"),
    ("POST", "/v1/recommendations", {"user_id": "u-alice", "k": 0}, None, 422, "k", ""),
    ("POST", "/v1/recommendations", {"user_id": "u-alice", "k": 101}, None, 422, "k", "100"),
    ("POST", "/v1/recommendations", {"user_id": "u-alice", "rerank": "magic"}, None, 422,
     "rerank", "none"),
    ("POST", "/v1/recommendations", {"query": "x" * 501}, None, 422, "query", "500"),
    ("POST", "/v1/recommendations", {"history": ["kit-0001"] * 201}, None, 422, "history", "200"),
    ("POST", "/v1/recommendations", {"history": ["bad id"]}, None, 422, "history[0]", "pattern"),
    ("POST", "/v1/recommendations", {"user_id": "u-alice", "rerank_mode": "none"}, None, 422,
     "rerank_mode", "extra"),
    ("POST", "/v1/recommendations",
     {"query": "tea", "filters": {"min_price": 10, "max_price": 1}}, None, 422, "filters",
     "min_price"),
    ("POST", "/v1/recommendations", {"query": "tea", "filters": {"min_price": -1}}, None, 422,
     "filters.min_price", ""),
    ("POST", "/v1/recommendations", {"query": "tea", "filters": {"exclude_ids": ["a b"]}}, None,
     422, "filters.exclude_ids[0]", ""),
    ("POST", "/v1/recommendations", {"query": "tea", "filters": {"categories": ["c"] * 51}},
     None, 422, "filters.categories", ""),
    ("POST", "/v1/recommendations", {"query": "tea", "headline": "please"}, None, 422,
     "headline", "bool"),
    ("POST", "/v1/recommendations", {"user_id": "u-nobody"}, None, 404, "user_id", "unknown"),
    ("POST", "/v1/recommendations", {"history": ["kit-0001", "zz-none"]}, None, 404,
     "history[1]", "unknown"),
    # assistant
    ("POST", "/v1/assistant/chat", {}, None, 422, "message", "required"),
    ("POST", "/v1/assistant/chat", {"message": ""}, None, 422, "message", ""),
    ("POST", "/v1/assistant/chat", {"message": "   "}, None, 422, "body", "blank"),
    ("POST", "/v1/assistant/chat", {"message": LONG}, None, 422, "message", "1000"),
    ("POST", "/v1/assistant/chat", {"message": "hi", "conversation_id": "a b"}, None, 422,
     "conversation_id", "pattern"),
    ("POST", "/v1/assistant/chat", {"message": "tea", "conversation_id": "deadbeef"}, None, 404,
     "", ""),
    ("GET", "/v1/assistant/conversations/deadbeef", None, None, 404, "", ""),
    ("GET", "/v1/assistant/conversations/a%20b", None, None, 422, "conversation_id", ""),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "params", "status", "field", "problem"), CASES)
def test_bad_input_names_the_field(
    client: TestClient,
    method: str,
    path: str,
    body: Any,
    params: dict[str, Any] | None,
    status: int,
    field: str,
    problem: str,
) -> None:
    r = client.request(method, path, json=body, params=params)
    err = error_of(r, status)
    if field:
        assert_field(err, field, problem)
    if status == 422:
        assert err["code"] == "invalid_request"
    if status == 404:
        assert err["code"] == "not_found"


def test_invalid_json_is_400(client: TestClient) -> None:
    r = client.post(
        "/v1/recommendations", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    err = error_of(r, 400)
    assert err["code"] == "invalid_json"
    assert_field(err, "body", "invalid JSON")


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b"[1, 2]", "application/json"),
        (b"null", "application/json"),
        (b"query=tea", "application/x-www-form-urlencoded"),
        (b"\xff\xfe", "application/json"),
    ],
)
def test_wrong_body_shapes_are_4xx(client: TestClient, content: bytes, ctype: str) -> None:
    r = client.post("/v1/recommendations", content=content, headers={"content-type": ctype})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["fields"] or r.json()["error"]["message"]


def test_body_over_the_limit_is_413(client: TestClient, settings: Any) -> None:
    big = b'{"query": "' + b"x" * (settings.max_body_bytes + 10) + b'"}'
    headers = {"content-type": "application/json"}
    r = client.post("/v1/recommendations", content=big, headers=headers)
    err = error_of(r, 413)
    assert err["code"] == "body_too_large"
    assert_field(err, "body")


def test_chunked_body_over_the_limit_is_413(client: TestClient, settings: Any) -> None:
    def chunks():  # no Content-Length: the limit must hold while reading
        yield b'{"query": "'
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    r = client.post(
        "/v1/recommendations", content=chunks(), headers={"content-type": "application/json"}
    )
    err = error_of(r, 413)
    assert_field(err, "body")


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    err = error_of(client.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in err["message"]
    err = error_of(client.put("/v1/recommendations", json={}), 405)
    assert err["code"] == "method_not_allowed"


def test_all_items_are_checked_and_good_ones_stored(client: TestClient) -> None:
    r = client.post(
        "/v1/products",
        json={
            "products": [
                {"id": "err-good-1", "title": "Enamel mug, 350 ml", "price": 9.5},
                {"id": "err-bad-1", "title": "Mug", "price": -3},
                {"id": "err-bad-2", "title": "", "currency": "dollars"},
            ]
        },
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["inserted"] == 1
    bad = {e["index"]: e for e in out["errors"]}
    assert set(bad) == {1, 2}
    assert {f["field"] for f in bad[1]["fields"]} == {"price"}
    assert {f["field"] for f in bad[2]["fields"]} == {"title", "currency"}
    assert client.get("/v1/products/err-good-1").status_code == 200
    assert client.get("/v1/products/err-bad-1").status_code == 404
