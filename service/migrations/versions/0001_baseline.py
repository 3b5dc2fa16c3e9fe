"""baseline: catalogue, copy, assistant and LLM log tables

Revision ID: 0001
Revises:
Create Date: 2026-11-30 03:27:28.625287
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# The columns below follow two conventions: NOT NULL unless said otherwise, and an integer
# surrogate key on the log-like tables.
def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), autoincrement=True, nullable=False)


def _col(name: str, type_: sa.types.TypeEngine, nullable: bool = False) -> sa.Column:
    return sa.Column(name, type_, nullable=nullable)


def _str(name: str, length: int, nullable: bool = False) -> sa.Column:
    return _col(name, sa.String(length=length), nullable)


def upgrade() -> None:
    op.create_table(
        "assistant_conversations",
        _str("id", 64),
        _str("user_id", 128, nullable=True),
        _str("title", 200),
        _col("created_at", sa.DateTime()),
        _col("updated_at", sa.DateTime()),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("assistant_conversations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_assistant_conversations_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "copies",
        _id(),
        _str("request_key", 64),
        _str("task", 32),
        _str("product_id", 128, nullable=True),
        _col("product_ids", sa.JSON()),
        _col("params", sa.JSON()),
        _str("language", 8),
        _col("variant", sa.Integer()),
        _col("text", sa.Text()),
        _col("edited_text", sa.Text(), nullable=True),
        _str("model_id", 256),
        _str("backend", 32),
        _str("template", 128),
        _str("template_version", 64),
        _col("prompt", sa.Text()),
        _col("checks", sa.JSON()),
        _col("failed_checks", sa.JSON()),
        _col("passed", sa.Boolean()),
        _col("attempts", sa.Integer()),
        _str("status", 16),
        _col("note", sa.Text()),
        _col("meta", sa.JSON()),
        _col("job_id", sa.Integer(), nullable=True),
        _col("created_at", sa.DateTime()),
        _col("updated_at", sa.DateTime()),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_copies_job_id"), ["job_id"], unique=False)
        batch_op.create_index("ix_copies_key", ["request_key"], unique=False)
        batch_op.create_index("ix_copies_product_task", ["product_id", "task"], unique=False)
        batch_op.create_index("ix_copies_status", ["status"], unique=False)

    op.create_table(
        "copy_jobs",
        _id(),
        _str("task", 32),
        _col("params", sa.JSON()),
        _str("signature", 64),
        _str("category", 128, nullable=True),
        _col("max_products", sa.Integer(), nullable=True),
        _col("batch_size", sa.Integer()),
        _col("total", sa.Integer()),
        _col("done", sa.Integer()),
        _col("failed", sa.Integer()),
        _str("status", 16),
        _col("cancel_requested", sa.Boolean()),
        _col("error", sa.Text()),
        _col("runner_pid", sa.Integer(), nullable=True),
        _str("runner_host", 256),
        _col("created_at", sa.DateTime()),
        _col("updated_at", sa.DateTime()),
        _col("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("copy_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_copy_jobs_signature"), ["signature"], unique=False)

    op.create_table(
        "interactions",
        _id(),
        _str("user_id", 128),
        _str("product_id", 128),
        _str("event", 16),
        _col("value", sa.Float(), nullable=True),
        _col("ts", sa.DateTime()),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.create_index("ix_interactions_product", ["product_id"], unique=False)
        batch_op.create_index("ix_interactions_user_ts", ["user_id", "ts"], unique=False)
        batch_op.create_index(
            "ux_interactions_event", ["user_id", "product_id", "event", "ts"], unique=True
        )

    op.create_table(
        "llm_calls",
        _id(),
        _col("ts", sa.DateTime()),
        _str("backend", 32),
        _str("model_id", 512),
        _str("kind", 32),
        _col("prompt", sa.Text()),
        _col("response", sa.Text(), nullable=True),
        _col("params", sa.JSON()),
        _col("prompt_tokens", sa.Integer(), nullable=True),
        _col("completion_tokens", sa.Integer(), nullable=True),
        _col("latency_ms", sa.Float()),
        _col("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.create_index("ix_llm_calls_ts", ["ts"], unique=False)

    op.create_table(
        "products",
        _str("id", 128),
        _str("title", 512),
        _col("description", sa.Text()),
        _str("category", 128),
        _str("brand", 128),
        _col("price", sa.Float(), nullable=True),
        _str("currency", 8),
        _col("attributes", sa.JSON()),
        _col("tags", sa.JSON()),
        _str("language", 8),
        _col("in_stock", sa.Boolean()),
        _str("content_hash", 64),
        _col("updated_at", sa.DateTime()),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_products_category"), ["category"], unique=False)

    op.create_table(
        "assistant_messages",
        _id(),
        _str("conversation_id", 64),
        _str("role", 16),
        _col("content", sa.Text()),
        _col("cited_ids", sa.JSON()),
        _col("product_ids", sa.JSON()),
        _str("model_id", 512, nullable=True),
        _str("template", 128, nullable=True),
        _str("template_version", 32, nullable=True),
        _col("degraded", sa.Boolean()),
        _col("meta", sa.JSON()),
        _col("created_at", sa.DateTime()),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["assistant_conversations.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("assistant_messages", schema=None) as batch_op:
        batch_op.create_index("ix_assistant_messages_conv", ["conversation_id", "id"], unique=False)

    op.create_table(
        "copy_job_items",
        _id(),
        _col("job_id", sa.Integer()),
        _col("seq", sa.Integer()),
        _str("product_id", 128),
        _str("status", 16),
        _col("copy_id", sa.Integer(), nullable=True),
        _col("error", sa.Text()),
        _col("updated_at", sa.DateTime()),
        sa.ForeignKeyConstraint(["job_id"], ["copy_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("copy_job_items", schema=None) as batch_op:
        batch_op.create_index("ix_copy_job_items_status", ["job_id", "status", "seq"], unique=False)
        batch_op.create_index("ux_copy_job_items", ["job_id", "product_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("copy_job_items", schema=None) as batch_op:
        batch_op.drop_index("ux_copy_job_items")
        batch_op.drop_index("ix_copy_job_items_status")

    op.drop_table("copy_job_items")
    with op.batch_alter_table("assistant_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_assistant_messages_conv")

    op.drop_table("assistant_messages")
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_products_category"))

    op.drop_table("products")
    with op.batch_alter_table("llm_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_llm_calls_ts")

    op.drop_table("llm_calls")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ux_interactions_event")
        batch_op.drop_index("ix_interactions_user_ts")
        batch_op.drop_index("ix_interactions_product")

    op.drop_table("interactions")
    with op.batch_alter_table("copy_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_copy_jobs_signature"))

    op.drop_table("copy_jobs")
    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.drop_index("ix_copies_status")
        batch_op.drop_index("ix_copies_product_task")
        batch_op.drop_index("ix_copies_key")
        batch_op.drop_index(batch_op.f("ix_copies_job_id"))

    op.drop_table("copies")
    with op.batch_alter_table("assistant_conversations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assistant_conversations_user_id"))

    op.drop_table("assistant_conversations")
