"""Fixtures for the HTTP tests (defined in tests/api/support.py, shared with tests/web).

Every test on the session app (`settings` → `app` → `client`) runs on SQLite and on a real
PostgreSQL (tests/postgres.py; the demo catalogue ingested into a fresh database). The
PostgreSQL runs carry the `postgresql` marker (`-m postgresql` picks them, `-m "not
postgresql"` leaves them out); `RECSMITH_TEST_API_DATABASES=sqlite` (or `postgresql`)
builds one app only. Cost measured under load ≈20 on 2 shared cores: the model-heavy
modules (products, recommendations, copy, assistant) 7.7 min on PostgreSQL, every other
module 80 s. Apps a test builds itself (live server, LLM down, hardening) stay on SQLite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from tests.api.support import (  # noqa: F401 - pytest finds fixtures by name
    anon,
    app,
    app_settings,
    client,
    demo_dir,
    fresh_copy,
    live_server,
    llm_down_client,
    llm_path,
)
from tests.foundation import make_recsmith
from tests.postgres import fresh_database

DATABASES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" not in metafunc.fixturenames:
        return
    chosen = os.environ.get("RECSMITH_TEST_API_DATABASES", ",".join(DATABASES)).split(",")
    unknown = set(chosen) - set(DATABASES)
    if unknown:
        raise pytest.UsageError(f"RECSMITH_TEST_API_DATABASES: unknown {sorted(unknown)}")
    # pytest groups the tests by this session-scoped value: one app per database.
    metafunc.parametrize("database", chosen, indirect=True, scope="session")


@pytest.fixture(scope="session")
def settings(
    database: str,
    demo_dir: Path,  # noqa: F811 - the fixture imported above
    llm_path: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    """The session app's settings over a copy of the demo data directory; on PostgreSQL the
    demo catalogue is ingested into a fresh database (the copied encoder cache makes the
    index sync cheap)."""
    data = fresh_copy(demo_dir, tmp_path_factory, f"api-{database}")
    if database == "sqlite":
        yield app_settings(data, llm_path)
        return
    with fresh_database() as url:
        (data / "recsmith.db").unlink(missing_ok=True)  # nothing may read the SQLite copy
        make_recsmith(data, database_url=url)
        yield app_settings(data, llm_path, database_url=url)
