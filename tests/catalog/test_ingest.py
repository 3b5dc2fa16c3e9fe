"""Ingest: every good row stored, every bad row reported, re-ingest changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.catalog.ingest import IngestError, ingest_file
from service.catalog.models import Product
from service.catalog.store import CatalogStore, NotFound

GOOD = [
    {
        "id": "p-1",
        "title": "Glass teapot 1.2 L",
        "category": "Tea",
        "price": 24.0,
        "attributes": {"capacity_l": 1.2},
        "tags": ["tea", "glass"],
    },
    {"id": "p-2", "title": "Cast iron kettle", "category": "Tea", "price": 59.0},
    {"id": "p-3", "title": "Bamboo tea tray", "category": "Tea", "price": 35.5, "in_stock": False},
]


@pytest.fixture()
def store(tmp_path: Path) -> CatalogStore:
    return CatalogStore(f"sqlite:///{tmp_path / 'db.sqlite'}")


def write_jsonl(path: Path, rows: list[object]) -> Path:
    with path.open("w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_jsonl_bad_rows_reported_good_rows_stored(store: CatalogStore, tmp_path: Path) -> None:
    rows = [
        GOOD[0],
        {"id": "p-bad", "price": 3},
        "{not json",
        GOOD[1],
        {"id": "has space", "title": "x"},
        {"id": "p-neg", "title": "y", "price": -1},
        GOOD[2],
    ]
    report = ingest_file(
        store, write_jsonl(tmp_path / "p.jsonl", rows), "products", rejects_dir=tmp_path / "rejects"
    )
    assert report.stored == 3
    assert [r.line for r in report.rejected] == [2, 3, 5, 6]
    reasons = {r.line: r.reason for r in report.rejected}
    assert "title" in reasons[2] and "JSON" in reasons[3]
    assert "id" in reasons[5] and "price" in reasons[6]
    assert store.count_products() == 3
    rejects = (tmp_path / "rejects" / "p.products.rejects.jsonl").read_text().splitlines()
    assert [json.loads(x)["line"] for x in rejects] == [2, 3, 5, 6]
    assert store.get_product("p-1").attributes == {"capacity_l": 1.2}


def test_reingest_is_idempotent_and_updates_change(store: CatalogStore, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    first = ingest_file(store, path, "products")
    again = ingest_file(store, path, "products")
    assert (first.stored, again.stored, again.unchanged) == (3, 0, 3)
    changed = [dict(GOOD[0], price=19.0), GOOD[1], GOOD[2]]
    third = ingest_file(store, write_jsonl(tmp_path / "p2.jsonl", changed), "products")
    assert (third.stored, third.unchanged, third.changed_ids) == (1, 2, ["p-1"])
    assert store.get_product("p-1").price == 19.0


def test_csv_fixture_with_malformed_rows(store: CatalogStore) -> None:
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "products_bad.csv"
    report = ingest_file(store, fixture, "products")
    assert report.stored == 6
    assert len(report.rejected) == 4
    assert all(r.line > 1 for r in report.rejected)  # header is line 1
    assert store.get_product("fx-1").title


def test_parquet_and_interactions(store: CatalogStore, tmp_path: Path) -> None:
    table = pa.Table.from_pylist(
        [{"id": g["id"], "title": g["title"], "price": g["price"]} for g in GOOD]
        + [{"id": "p-4", "title": None, "price": 1.0}]
    )
    pq.write_table(table, tmp_path / "p.parquet")
    report = ingest_file(store, tmp_path / "p.parquet", "products")
    assert report.stored == 3 and len(report.rejected) == 1 and "title" in report.rejected[0].reason
    events = [
        {"user_id": "u1", "product_id": "p-1", "event": "view", "ts": "2026-01-01T10:00:00Z"},
        {"user_id": "u1", "product_id": "p-2", "event": "purchase", "ts": "2026-01-02T10:00:00Z"},
        {"user_id": "u1", "product_id": "p-9", "event": "view", "ts": "2026-01-03T10:00:00Z"},
        {"user_id": "u1", "product_id": "p-1", "event": "like", "ts": "2026-01-03T10:00:00Z"},
    ]
    path = write_jsonl(tmp_path / "i.jsonl", events)
    rep = ingest_file(store, path, "interactions")
    assert rep.stored == 2
    assert {r.line: r.reason.split(":")[0] for r in rep.rejected} == {3: "product_id", 4: "event"}
    again = ingest_file(store, path, "interactions")
    assert again.stored == 0 and store.count_interactions() == 2
    assert [p for p, _, _ in store.user_history("u1")] == ["p-1", "p-2"]
    assert store.purchased("u1") == {"p-2"}


def test_interactions_fixture(store: CatalogStore) -> None:
    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    ingest_file(store, fixtures / "products_bad.csv", "products")
    report = ingest_file(store, fixtures / "interactions_bad.jsonl", "interactions")
    assert report.stored == 6 and len(report.rejected) == 3


def test_a_failing_batch_leaves_earlier_batches_whole(store: CatalogStore, tmp_path: Path) -> None:
    rows = [{"id": f"p-{i}", "title": f"Item {i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    calls = {"n": 0}

    def crash_after_first_batch(_: int) -> None:
        calls["n"] += 1
        if calls["n"] == 5:  # inside the second batch of 4
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        ingest_file(store, path, "products", batch_size=4, progress=crash_after_first_batch)
    assert store.count_products() == 4  # the first batch whole, nothing half-written
    ingest_file(store, path, "products", batch_size=4)
    assert store.count_products() == 10


def test_file_level_errors(store: CatalogStore, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no such file"):
        ingest_file(store, tmp_path / "missing.csv", "products")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(IngestError, match="format"):
        ingest_file(store, tmp_path / "x.txt", "products")
    with pytest.raises(NotFound, match="unknown product id 'nope'"):
        store.get_product("nope")


def test_demo_catalogue_is_valid_and_rich() -> None:
    demo = Path(__file__).resolve().parent.parent.parent / "service" / "demo" / "products.jsonl"
    products = [
        Product.model_validate_json(line) for line in demo.read_text().splitlines() if line.strip()
    ]
    assert len(products) >= 200
    assert len({p.category for p in products}) >= 10
    assert len({p.id for p in products}) == len(products)
