"""Schema migrations: a new database is built by them, an old `create_all` database is
adopted, the newest revision matches the ORM tables exactly, and `recsmith db` works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.migrate import BASELINE, alembic_config, current, head, upgrade
from service.tables import metadata
from tests.postgres import fresh_database


def _url(tmp_path: Path, name: str = "db.sqlite") -> str:
    return f"sqlite:///{tmp_path / name}"


def test_a_new_database_is_built_by_the_migrations(tmp_path: Path) -> None:
    engine = create_engine(_url(tmp_path))
    assert current(engine) is None
    assert upgrade(engine) is True
    assert current(engine) == head()
    tables = set(inspect(engine).get_table_names())
    assert {"products", "interactions", "copies", "copy_jobs", "llm_calls"} <= tables
    assert upgrade(engine) is False  # idempotent: already at head


def test_the_newest_revision_matches_the_orm_tables(tmp_path: Path) -> None:
    # Fails when a table or column changes without a migration script.
    engine = create_engine(_url(tmp_path))
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_a_database_made_before_migrations_is_stamped_then_upgraded(tmp_path: Path) -> None:
    engine = create_engine(_url(tmp_path))
    upgrade(engine, BASELINE)
    with engine.begin() as conn:  # as `create_all` left it: the tables, no alembic_version
        conn.execute(text("DROP TABLE alembic_version"))
    assert current(engine) is None
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO products (id, title, description, category, brand, "
                          "currency, attributes, tags, language, in_stock, content_hash, "
                          "updated_at) VALUES ('p1', 'Kept', '', '', '', 'USD', '{}', '[]', "
                          "'en', 1, '', '2026-01-01')"))  # fmt: skip
    assert upgrade(engine) is True
    assert current(engine) == head()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT title FROM products")).scalar() == "Kept"


def test_recsmith_db_cli(tmp_path: Path) -> None:
    env = {"RECSMITH_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = [str(Path(sys.executable).parent / "recsmith")]
    up = subprocess.run([*run, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert head() in up.stdout
    again = subprocess.run([*run, "db", "current"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and f"database: {head()}" in again.stdout


def test_migrations_on_postgresql() -> None:
    """The same scripts build a PostgreSQL database that matches the ORM, and adopt one that
    `create_all` made before migrations existed."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            assert upgrade(engine) is True
            assert current(engine) == head()
            with engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            assert upgrade(engine) is False
        finally:
            engine.dispose()
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            upgrade(engine, BASELINE)
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE alembic_version"))
            assert upgrade(engine) is True and current(engine) == head()
            assert "heartbeat_at" in {c["name"] for c in inspect(engine).get_columns("copy_jobs")}
        finally:
            engine.dispose()


def test_the_filter_columns_migration_fills_them_and_keeps_the_graph() -> None:
    """0005 on a PostgreSQL database with vectors and an HNSW index: the copied filter
    columns are filled from the products, the graph is built again as it was, and the
    triggers keep the columns in step from then on."""
    with fresh_database() as url:
        engine = create_engine(url)
        try:
            upgrade(engine, "0004")
            with engine.begin() as c:
                c.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                c.execute(
                    text(
                        "INSERT INTO products (id, title, description, category, brand, price, "
                        "currency, attributes, tags, language, in_stock, content_hash, "
                        "updated_at) VALUES ('p1', 'T', '', 'Books', '', 9.5, 'USD', '{}', "
                        "'[]', 'en', false, 'h', '2026-01-01')"
                    )
                )
                c.execute(text("INSERT INTO product_vectors VALUES ('p1', 'm', 'h', '{1,0,0}')"))
                c.execute(text("ALTER TABLE product_vectors ALTER COLUMN embedding TYPE vector(3)"))
                c.execute(
                    text(
                        "CREATE INDEX ix_product_vectors_hnsw_3 ON product_vectors "
                        "USING hnsw (embedding vector_cosine_ops) WITH (m = 24)"
                    )
                )
            assert upgrade(engine) is True and current(engine) == head()
            read = "SELECT category, price, in_stock FROM product_vectors WHERE product_id = 'p1'"
            with engine.connect() as c:
                assert tuple(c.execute(text(read)).one()) == ("books", 9.5, False)
                graph = c.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                    {"n": "ix_product_vectors_hnsw_3"},
                ).scalar()
            assert graph is not None and "m='24'" in graph
            with engine.begin() as c:
                c.execute(text("UPDATE products SET category = 'Toys', price = NULL"))
            with engine.connect() as c:
                assert tuple(c.execute(text(read)).one()) == ("toys", None, False)
            with engine.begin() as c:  # and back: columns and triggers gone, products writable
                command.downgrade(alembic_config(c), "0004")
                c.execute(text("UPDATE products SET price = 3"))
                columns = "SELECT column_name FROM information_schema.columns "
                columns += "WHERE table_name = 'product_vectors'"
                assert "price" not in set(c.execute(text(columns)).scalars())
        finally:
            engine.dispose()
