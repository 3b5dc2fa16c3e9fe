"""Fixtures of the copy tests: the session's data dir (tests/conftest.py) with the demo
catalogue ingested, and the REAL default model in-process.

`llm` is tests/fakes.py's FakeLLM passing every call to the real backend and recording each
generate call's batch size (`batches`): how the tests see "no model call" and "one call
per batch".
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.catalog.ingest import ingest_file
from service.catalog.store import CatalogStore
from service.config import Settings
from service.copy.tables import CopyRow
from service.copy.writer import CopyWriter
from service.db import get_engine, session_scope
from service.llm.base import LLM
from service.llm.factory import get_llm
from service.prompts import PROMPTS_DIR, PromptLibrary
from tests.fakes import FakeLLM
from tests.postgres import fresh_database

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "service" / "demo"
TEST_PROMPTS = Path(__file__).resolve().parent / "prompts"


def copies_per_product(settings: Settings, job_id: int) -> dict[str, int]:
    """How many texts a batch job stored for each product."""
    with session_scope(get_engine(settings.db_url)) as s:
        rows = s.execute(
            select(CopyRow.product_id, func.count())
            .where(CopyRow.job_id == job_id)
            .group_by(CopyRow.product_id)
        ).all()
        return dict(rows)


@pytest.fixture(scope="session")
def settings(settings: Settings) -> Settings:
    """The session's settings (tests/conftest.py) with one retry: keeps the real-model
    tests short."""
    s = settings.model_copy(update={"copy_max_retries": 1})
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def catalog(settings: Settings) -> CatalogStore:
    store = CatalogStore(settings.db_url)
    report = ingest_file(store, DEMO / "products.jsonl", "products")
    assert report.stored > 0
    ingest_file(store, DEMO / "interactions.jsonl", "interactions")
    return store


def postgres_settings(settings: Settings, url: str) -> Settings:
    """`settings` on the PostgreSQL database `url`, with the demo catalogue in it."""
    s = settings.model_copy(update={"database_url": url})
    store = CatalogStore(url)
    assert ingest_file(store, DEMO / "products.jsonl", "products").stored > 0
    ingest_file(store, DEMO / "interactions.jsonl", "interactions")
    return s


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(
    request: pytest.FixtureRequest, settings: Settings, catalog: CatalogStore
) -> Iterator[Settings]:
    """The session's settings on SQLite (the session's catalogue), or on a fresh PostgreSQL
    database with the demo catalogue (tests/postgres.py): the job and store tests run on
    both. PostgreSQL jobs run on the database queue (service/copy/queue.py)."""
    if request.param == "sqlite":
        yield settings
        return

    with fresh_database() as url:
        yield postgres_settings(settings, url)
        get_engine(url).dispose()


@pytest.fixture(scope="session")
def real_llm(settings: Settings) -> LLM:
    return get_llm(settings)


@pytest.fixture
def llm(settings: Settings, real_llm: LLM) -> FakeLLM:
    """The real model, its generate calls counted (`batches`)."""
    return FakeLLM(settings, inner=real_llm)


@pytest.fixture
def writer(settings: Settings, catalog: CatalogStore, llm: FakeLLM) -> CopyWriter:
    return CopyWriter(settings, llm=llm, catalog=catalog)


@pytest.fixture(scope="session")
def provoking_prompts(tmp_path_factory: pytest.TempPathFactory) -> PromptLibrary:
    """The real copy templates, with the summary and blurb tasks replaced by test-only
    ones that provoke an invented number and a banned claim (tests/copy/prompts)."""
    d = tmp_path_factory.mktemp("copy-prompts")
    for f in PROMPTS_DIR.glob("copy_*.j2"):
        shutil.copy(f, d / f.name)
    for f in TEST_PROMPTS.glob("*.j2"):
        shutil.copy(f, d / f.name)
    return PromptLibrary(d)
