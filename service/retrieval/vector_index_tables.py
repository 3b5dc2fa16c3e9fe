"""Tables of the shared index state: product vectors in the database (the pgvector index)
and the catalogue change log every index process follows (service/retrieval/vector_index.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.orm import Mapped, mapped_column

from service.orm import Base

# float4[] on PostgreSQL: the HNSW index is on `embedding::vector(dim)`, an expression with
# the encoder's dimension, so the column needs neither the extension at migration time nor a
# fixed dimension. SQLite has no vector search; the column exists there only so one ORM
# describes both databases (the in-process index keeps its vectors in the data directory).
EmbeddingType = LargeBinary().with_variant(ARRAY(REAL), "postgresql")


class ProductVectorRow(Base):
    __tablename__ = "product_vectors"

    product_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[str] = mapped_column(String(256))
    # The product's content hash when it was encoded: a changed text is re-encoded, a changed
    # price is not.
    content_hash: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes | list[float] | None] = mapped_column(EmbeddingType, nullable=True)
    # The product's filter columns (category lower-cased), copied here so the pgvector index
    # filters and scores these rows alone: no join, and a covering index holds a category's
    # vectors side by side (vector_index_pg.py). Kept in step on PostgreSQL by triggers
    # (migration 0005); unused on SQLite.
    category: Mapped[str | None] = mapped_column(String(128), nullable=True)
    price: Mapped[float | None] = mapped_column(Float, nullable=True)
    in_stock: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class CatalogChangeRow(Base):
    """One row per product written or deleted; the newest `seq` is the catalogue's version.
    A process holding an in-process index compares it with the version it applied and reads
    only the ids written since (no full-catalogue read per write)."""

    __tablename__ = "catalog_changes"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime, default=datetime.utcnow)
