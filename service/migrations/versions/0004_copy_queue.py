"""copy jobs on a database queue: per-item claims (worker, heartbeat, attempts) and one
text per (job, task, product, variant)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from service.migrations.columns import add_columns, drop_columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_columns(
        "copy_job_items",
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    # A database written before the constraint could hold a job's text twice (it should
    # not, but a unique index cannot be built over it): the later copies keep their text
    # and lose only their job link.
    op.execute(
        "UPDATE copies SET job_id = NULL WHERE job_id IS NOT NULL AND id NOT IN ("
        "SELECT keep FROM (SELECT MIN(id) AS keep FROM copies WHERE job_id IS NOT NULL "
        "GROUP BY job_id, task, product_id, variant) AS firsts)"
    )
    with op.batch_alter_table("copies") as batch_op:
        batch_op.create_index(
            "ux_copies_job_item", ["job_id", "task", "product_id", "variant"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("copies") as batch_op:
        batch_op.drop_index("ux_copies_job_item")
    drop_columns("copy_job_items", "attempts", "heartbeat_at", "claimed_at", "worker_id")
