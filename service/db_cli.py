"""`recsmith db …`: the schema migrations by hand (they also run on every start-up)."""

from __future__ import annotations

import typer
from rich.console import Console
from sqlalchemy import Engine, create_engine

from service.config import get_settings
from service.migrate import current, head, upgrade

db_app = typer.Typer(help="The database schema (Alembic migrations).", no_args_is_help=True)
console = Console()


def _engine() -> Engine:
    # A bare engine: service.db.get_engine() would already migrate on first use.
    return create_engine(get_settings().db_url)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Bring the configured database to the newest schema (idempotent)."""
    engine = _engine()
    before = current(engine)
    ran = upgrade(engine, revision)
    after = current(engine)
    console.print(f"schema {before or 'empty'} → {after}" if ran else f"schema already at {after}")


@db_app.command("current")
def db_current() -> None:
    """The database's schema revision and the newest one this code knows."""
    console.print(f"database: {current(_engine()) or 'empty'}; code: {head()}")
