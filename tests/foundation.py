"""Helpers shared by the foundation tests: a Recsmith over a temporary data directory."""

from __future__ import annotations

from pathlib import Path

from service.catalog.ingest import ingest_file
from service.config import Settings
from service.recsmith import Recsmith

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "service" / "demo"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Chinese queries, each describing one of the demo's Chinese products without its title
ZH_QUERIES = {
    "煮米饭的电饭锅": "kit-zh-01",
    "炒菜用的铁锅": "kit-zh-02",
    "送礼用的功夫茶具": "cof-zh-01",
    "杭州的龙井绿茶": "cof-zh-02",
    "真丝枕套": "bed-zh-01",
    "学生看书用的护眼台灯": "lig-zh-01",
}


def make_recsmith(data_dir: Path, demo: bool = True, **overrides: object) -> Recsmith:
    settings = Settings(data_dir=data_dir, **overrides)
    rs = Recsmith(settings)
    if demo:
        ingest_file(rs.store, DEMO / "products.jsonl", "products")
        ingest_file(rs.store, DEMO / "interactions.jsonl", "interactions")
        rs.sync_index()
    return rs
