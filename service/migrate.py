"""Schema migrations (Alembic, scripts in service/migrations/): `upgrade(engine)` brings a
database to the newest revision. It runs on every engine's first use (start-up of the API,
each CLI command) and from `recsmith db upgrade`; when the database is already current it
costs one small query.

A database made before migrations existed (tables created by `create_all`, no
`alembic_version`) is stamped at the baseline first, then upgraded.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema as `create_all` made it before migrations
_lock = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    return ",".join(sorted(heads))


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


@contextmanager
def _exclusive(engine: Engine, conn: Connection) -> Iterator[None]:
    """One migrator per database: an advisory lock on PostgreSQL (other hosts too), a lock
    file beside a SQLite database (other processes on this host)."""
    with _lock:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
            yield
            return
        db = engine.url.database
        if engine.dialect.name != "sqlite" or not db or db == ":memory:":
            yield
            return
        with open(f"{db}.migrate.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> bool:
    """Migrate to `revision`; returns True when anything ran."""
    target = head() if revision == "head" else revision
    if current(engine) == target:
        return False
    with engine.begin() as conn, _exclusive(engine, conn):
        now = ",".join(sorted(MigrationContext.configure(conn).get_current_heads())) or None
        if now == target:  # another process got there first
            return False
        cfg = alembic_config(conn)
        if now is None and inspect(conn).has_table("products"):
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, revision)
    return True
