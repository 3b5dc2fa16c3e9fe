"""vector index state: product vectors in the database (pgvector) and the catalogue change
log that keeps every process's index in step

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # float4[] on PostgreSQL (indexed as vector(dim) by service/retrieval/vector_index_pg.py,
    # which creates the extension and the HNSW index: the dimension is the encoder's).
    embedding = sa.LargeBinary().with_variant(postgresql.ARRAY(postgresql.REAL()), "postgresql")
    op.create_table(
        "product_vectors",
        sa.Column("product_id", sa.String(length=128), nullable=False),
        sa.Column("model_id", sa.String(length=256), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("embedding", embedding, nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("product_id"),
    )
    op.create_table(
        "catalog_changes",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("product_id", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )


def downgrade() -> None:
    op.drop_table("catalog_changes")
    op.drop_table("product_vectors")
