"""Helpers shared by the foundation tests: a Recsmith over a temporary data directory."""

from __future__ import annotations

from pathlib import Path

from service.catalog.ingest import ingest_file
from service.config import Settings
from service.recsmith import Recsmith

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "service" / "demo"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_recsmith(data_dir: Path, demo: bool = True, **overrides: object) -> Recsmith:
    settings = Settings(data_dir=data_dir, **overrides)
    rs = Recsmith(settings)
    if demo:
        ingest_file(rs.store, DEMO / "products.jsonl", "products")
        ingest_file(rs.store, DEMO / "interactions.jsonl", "interactions")
        rs.sync_index()
    return rs
