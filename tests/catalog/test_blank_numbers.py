"""A blank number cell (a CSV exported with empty prices or values) is an absent number, not
a rejected row; text that is no number is still rejected, naming the field."""

from __future__ import annotations

from pathlib import Path

from service.catalog.ingest import ingest_file
from service.catalog.store import CatalogStore


def test_blank_price_and_value_cells_are_absent(tmp_path: Path) -> None:
    store = CatalogStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    products = tmp_path / "p.csv"
    products.write_text("id,title,price\np-1,Teapot,\np-2,Kettle,  \np-3,Tray,abc\np-4,Mug,4.5\n")
    report = ingest_file(store, products, "products", rejects_dir=tmp_path / "rejects")
    assert report.stored == 3
    assert [(r.line, "price" in r.reason) for r in report.rejected] == [(4, True)]
    assert store.get_product("p-1").price is None
    assert store.get_product("p-2").price is None
    assert store.get_product("p-4").price == 4.5

    events = tmp_path / "i.csv"
    events.write_text("user_id,product_id,event,value\nu-1,p-1,rating,\nu-1,p-4,rating,x\n")
    report = ingest_file(store, events, "interactions", rejects_dir=tmp_path / "rejects")
    assert report.stored == 1
    assert [(r.line, "value" in r.reason) for r in report.rejected] == [(3, True)]
