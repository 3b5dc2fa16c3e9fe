"""copy jobs on a database queue: per-item claims (worker, heartbeat, attempts) and one
text per (job, task, product, variant)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("copy_job_items") as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
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
    with op.batch_alter_table("copy_job_items") as batch_op:
        batch_op.drop_column("attempts")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("worker_id")
