"""the filter columns (lower-cased category, price, in stock) copied into product_vectors,
so the pgvector index filters and scores vector rows without a join to products

Revision ID: 0005
Revises: 0004

On PostgreSQL the copies are kept in step by triggers, in the transaction of whatever
writes a product or a vector row: a vector row takes its product's values when inserted,
a product's change of category, price or stock is copied to its vector row. SQLite has
the columns too (one ORM for both), unused: the in-process index keeps its own.
"""

import sqlalchemy as sa
from alembic import op

from service.migrations.columns import add_columns, drop_columns

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TRIGGERS = (
    """CREATE FUNCTION product_vectors_take_filters() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        SELECT lower(p.category), p.price, p.in_stock
        INTO NEW.category, NEW.price, NEW.in_stock
        FROM products p WHERE p.id = NEW.product_id;
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER product_vectors_take_filters BEFORE INSERT ON product_vectors
    FOR EACH ROW EXECUTE FUNCTION product_vectors_take_filters()""",
    """CREATE FUNCTION products_give_filters() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE product_vectors
        SET category = lower(NEW.category), price = NEW.price, in_stock = NEW.in_stock
        WHERE product_id = NEW.id;
        RETURN NULL;
    END $$""",
    # Only a real change: an upsert that rewrites a product unchanged writes no vector row.
    """CREATE TRIGGER products_give_filters AFTER UPDATE OF category, price, in_stock
    ON products FOR EACH ROW WHEN (
        lower(OLD.category) IS DISTINCT FROM lower(NEW.category)
        OR OLD.price IS DISTINCT FROM NEW.price
        OR OLD.in_stock IS DISTINCT FROM NEW.in_stock
    ) EXECUTE FUNCTION products_give_filters()""",
)


def upgrade() -> None:
    add_columns(
        "product_vectors",
        sa.Column("category", sa.String(length=128), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("in_stock", sa.Boolean(), nullable=True),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    # The backfill writes a new version of every row: with the HNSW graph in place each one
    # is a graph insert and the old versions stay in the graph until a vacuum repairs it, so
    # the graph is dropped and built again from its own definition, with the memory to build
    # it in one pass. 100k rows, m 24, niced beside other work: UPDATE 2.4 s, rebuild 115 s
    # (178 s at the default 64 MB, past which the build goes row by row); in place, 78 s.
    bind = op.get_bind()
    graphs: list[tuple[str, str, int]] = []
    if bind.execute(sa.text("SELECT EXISTS (SELECT 1 FROM product_vectors)")).scalar():
        found = bind.execute(
            sa.text(
                "SELECT indexname, indexdef, pg_relation_size(indexname::regclass) "
                "FROM pg_indexes WHERE tablename = 'product_vectors' "
                "AND indexdef ILIKE '%USING hnsw%'"
            )
        )
        graphs = [(name, definition, size) for name, definition, size in found]
    for name, _, _ in graphs:
        op.execute(f'DROP INDEX "{name}"')
    op.execute(
        "UPDATE product_vectors v SET category = lower(p.category), price = p.price, "
        "in_stock = p.in_stock FROM products p WHERE p.id = v.product_id"
    )
    for _, definition, size in graphs:
        memory = max(64, round(1.25 * size / 2**20))  # MB: the graph's size on disk, and some
        op.execute(f"SET LOCAL maintenance_work_mem = '{memory}MB'")
        op.execute(definition)
    for statement in TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS products_give_filters ON products")
        op.execute("DROP TRIGGER IF EXISTS product_vectors_take_filters ON product_vectors")
        op.execute("DROP FUNCTION IF EXISTS products_give_filters()")
        op.execute("DROP FUNCTION IF EXISTS product_vectors_take_filters()")
    drop_columns("product_vectors", "in_stock", "price", "category")
