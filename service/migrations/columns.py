"""Column changes for migration scripts, in batch mode: SQLite cannot drop a column in
place, so Alembic rebuilds the table once per batch; PostgreSQL gets plain ALTER TABLE."""

import sqlalchemy as sa
from alembic import op


def add_columns(table: str, *columns: sa.Column) -> None:
    with op.batch_alter_table(table) as batch_op:
        for column in columns:
            batch_op.add_column(column)


def drop_columns(table: str, *names: str) -> None:
    """Drops them in the order given (a downgrade names them last added first)."""
    with op.batch_alter_table(table) as batch_op:
        for name in names:
            batch_op.drop_column(name)
