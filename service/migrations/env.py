"""Alembic environment: runs on the connection `service.migrate` hands over (no ini file,
no URL of its own), with batch mode so SQLite can alter tables."""

from alembic import context

from service.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `service.migrate` drives migrations
    raise RuntimeError("run migrations through `recsmith db upgrade`")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
