"""copy jobs: the owner's start token and a heartbeat (tell a live runner from a dead one)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("copy_jobs") as batch_op:
        batch_op.add_column(
            sa.Column("runner_token", sa.String(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("copy_jobs") as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("runner_token")
