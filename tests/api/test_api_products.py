"""Products and interactions over HTTP: upsert, get, list, search, delete, similar, append."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_upsert_indexes_and_search_finds_it(client: TestClient) -> None:
    item = {
        "id": "api-kettle-1",
        "title": "Gooseneck pour-over kettle, 0.9 L, matte black",
        "description": "A slow, precise pour for filter coffee.",
        "category": "Coffee & Tea",
        "price": 49.0,
        "tags": ["kettle", "pour-over"],
    }
    r = client.post("/v1/products", json={"products": [item]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["inserted"], out["updated"], out["errors"]) == (1, 0, [])
    assert out["index"]["encoded"] == 1

    # Same content again: unchanged, nothing re-indexed.
    again = client.post("/v1/products", json={"products": [item]}).json()
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 1)
    assert again["index"] is None

    got = client.get("/v1/products/api-kettle-1").json()
    assert got["title"] == item["title"] and got["price"] == 49.0

    hits = client.get("/v1/products", params={"q": "gooseneck kettle", "limit": 5}).json()
    assert "api-kettle-1" in [p["id"] for p in hits["items"]]

    updated = client.post("/v1/products", json={"products": [{**item, "price": 45.0}]}).json()
    assert updated["updated"] == 1
    assert client.get("/v1/products/api-kettle-1").json()["price"] == 45.0

    assert client.delete("/v1/products/api-kettle-1").status_code == 204
    assert client.get("/v1/products/api-kettle-1").status_code == 404
    hits = client.get("/v1/products", params={"q": "gooseneck kettle"}).json()
    assert "api-kettle-1" not in [p["id"] for p in hits["items"]]


def test_list_pages_through_the_catalogue(client: TestClient) -> None:
    first = client.get("/v1/products", params={"limit": 50}).json()
    total = first["total"]
    assert total >= 238
    seen = [p["id"] for p in first["items"]]
    offset = first["next_offset"]
    while offset is not None:
        page = client.get("/v1/products", params={"limit": 50, "offset": offset}).json()
        seen += [p["id"] for p in page["items"]]
        offset = page["next_offset"]
    assert len(seen) == len(set(seen)) == total
    assert seen == sorted(seen)


def test_list_by_category_and_search_paging(client: TestClient) -> None:
    kitchen = client.get("/v1/products", params={"category": "kitchen", "limit": 200}).json()
    assert kitchen["items"] and all(p["category"] == "Kitchen" for p in kitchen["items"])
    p1 = client.get("/v1/products", params={"q": "coffee", "limit": 3}).json()
    p2 = client.get("/v1/products", params={"q": "coffee", "limit": 3, "offset": 3}).json()
    ids1, ids2 = [p["id"] for p in p1["items"]], [p["id"] for p in p2["items"]]
    assert len(ids1) == 3 and p1["next_offset"] == 3
    assert not set(ids1) & set(ids2)


def test_similar_items(client: TestClient) -> None:
    r = client.get("/v1/products/kit-0001/similar", params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [i["product_id"] for i in body["items"]]
    assert len(ids) == 5 and "kit-0001" not in ids
    # A cast-iron skillet's neighbours are kitchen things.
    assert body["items"][0]["category"] == "Kitchen"
    assert all(i["sources"] for i in body["items"])
    only = client.get(
        "/v1/products/kit-0001/similar", params={"k": 5, "category": "Coffee & Tea"}
    ).json()
    assert only["items"] and all(i["category"] == "Coffee & Tea" for i in only["items"])


def test_interactions_append_and_change_recommendations(client: TestClient) -> None:
    events = [
        {"user_id": "u-api-new", "product_id": "cof-0001", "event": "view", "ts": 1790000000},
        {"user_id": "u-api-new", "product_id": "cof-0002", "event": "purchase", "ts": 1790000100},
        {"user_id": "u-api-new", "product_id": "zz-none", "event": "view"},
    ]
    r = client.post("/v1/interactions", json={"interactions": events})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["added"] == 2
    assert [e["index"] for e in out["errors"]] == [2]
    # Duplicates are skipped.
    again = client.post("/v1/interactions", json={"interactions": events[:2]}).json()
    assert again["added"] == 0
    rec = client.post("/v1/recommendations", json={"user_id": "u-api-new", "k": 5}).json()
    assert rec["items"]
    assert "cof-0002" not in [i["product_id"] for i in rec["items"]]  # purchased: excluded
