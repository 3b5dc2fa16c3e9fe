"""copy jobs: the owner's start token and a heartbeat (tell a live runner from a dead one)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa

from service.migrations.columns import add_columns, drop_columns

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_columns(
        "copy_jobs",
        sa.Column("runner_token", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    drop_columns("copy_jobs", "heartbeat_at", "runner_token")
