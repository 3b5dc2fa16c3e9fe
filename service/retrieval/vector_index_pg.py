"""The pgvector index: product vectors in the database (`product_vectors`, beside the
products), an HNSW index with cosine ops, the business filters in the same SQL statement.
Every API process and host reads the same rows, so there is nothing to keep in step after
a write.

The migration creates the column as float4[] (no extension needed, no dimension known);
this index turns it into `vector(dim)` with the encoder's dimension when it first opens the
database. Native vectors matter: computing distances through a float4[] -> vector cast was
15x slower (50 ms vs 3.5 ms over 2,000 rows of 384 dimensions).

The filter columns (lower-cased category, price, in stock) are copied into `product_vectors`
(migration 0005: triggers keep them in step with the products), so a search reads vector
rows only. A btree on (category, price) INCLUDE (in_stock, product_id, embedding) holds each
category's vectors side by side in its leaves: exact search over a category is an index-only
scan, ~0.9 µs a row at 1M products (a 2 % category 21 ms p50), where fetching each allowed
row's vector by key through the products table cost 7–11 µs (100–240 ms). The price: the
index is as large as the table, and a price or stock change writes a new version of the
vector row (an HNSW entry too). A btree entry holds at most ~2.7 kB, so past
`COVERING_MAX_DIM` the index has no vectors and the rows are read from the table.

Filtered search: an HNSW scan yields at most `hnsw.ef_search` candidates and the filter is
applied after it, so a selective filter can leave fewer than k. Per query, the planner's
estimate of the rows the filter keeps decides:
- the graph needs ef_search ≥ `filter_margin`·k/selectivity for that many allowed
  candidates to survive the filter (at most 1000, pgvector's cap);
- exact search over the allowed rows when they are few (≤ `exact_below`) and either the
  graph cannot reach them (the ef needed is past the cap) or they are no more than
  `exact_per_ef`·ef (the exact scan then costs less);
- otherwise HNSW with that ef_search; when fewer than k come back anyway, exact search.

`iterative=True` (pgvector ≥ 0.8, `RECSMITH_PGVECTOR_ITERATIVE_SCAN`) instead lets the
graph walk go on past ef_search until k rows pass the filter (`hnsw.iterative_scan =
relaxed_order`, the k rows re-sorted by exact distance), leaving exact search to filters
keeping ≤ `exact_per_ef`·ef rows. It is opt-in because at 1M products, with category
filters unrelated to the query, the walk found k allowed rows far from the query: recall
0.47–0.52 for a 2 % filter, where the plan above ran dry and went exact (recall 1.0);
it pays where filters follow the query (a shopper inside the category they search).
eval/results/2026-11-30-scale-1m.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from service.catalog.models import Product
from service.config import ConfigError
from service.retrieval.filters import Filters, filters_active
from service.retrieval.vector_index import Hits, VectorIndex, VectorQuery
from service.retrieval.vector_index_tables import ProductVectorRow

EF_MAX = 1000  # pgvector's upper bound of hnsw.ef_search
# A btree entry is at most ~2,700 bytes; with id and category (128 characters each, up to 4
# bytes a character) the vector fits up to this dimension (4 bytes a coordinate).
COVERING_MAX_DIM = 384
FILTER_INDEX = "ix_product_vectors_filters"
ITERATIVE_SINCE = (0, 8)  # the pgvector release with hnsw.iterative_scan


def _literal(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vec, dtype=np.float32).ravel()) + "]"


class PgVectorIndex(VectorIndex):
    persistent = True

    def __init__(
        self,
        engine: Engine,
        dim: int,
        ef_search: int = 400,
        exact_below: int = 50_000,
        m: int = 16,
        ef_construction: int = 64,
        with_hnsw: bool = True,
        filter_margin: float = 8.0,
        exact_per_ef: float = 3.0,
        max_scan_tuples: int = 40_000,
        iterative: bool = False,
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ConfigError(
                "RECSMITH_VECTOR_INDEX=pgvector needs a PostgreSQL database "
                f"(RECSMITH_DATABASE_URL=postgresql+psycopg://…), not {engine.dialect.name}"
            )
        self.engine, self.dim = engine, dim
        self.ef_search, self.exact_below = ef_search, exact_below
        self.m, self.ef_construction = m, ef_construction
        self.filter_margin, self.exact_per_ef = filter_margin, exact_per_ef
        self.max_scan_tuples = max_scan_tuples
        self._vec = f"vector({dim})"
        self._dist = f"(v.embedding <=> CAST(:q AS {self._vec}))"
        self.ensure(with_hnsw)
        self.iterative = iterative
        if iterative and (found := self.version()) < ITERATIVE_SINCE:
            raise ConfigError(
                "RECSMITH_PGVECTOR_ITERATIVE_SCAN needs pgvector 0.8 or newer; this server has "
                + ".".join(map(str, found))
            )

    def version(self) -> tuple[int, ...]:
        """The installed pgvector release, e.g. (0, 8, 5)."""
        with self.engine.connect() as c:
            v = c.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
            found = v.scalar() or "0"
        return tuple(int(x) for x in found.split(".") if x.isdigit())

    @property
    def index_name(self) -> str:
        return f"ix_product_vectors_hnsw_{self.dim}"

    def ensure(self, with_hnsw: bool = True) -> None:
        """The extension and the indexes (idempotent). `with_hnsw=False` defers the HNSW
        index: a bulk load builds it once afterwards (build_hnsw), much faster."""
        try:
            with self.engine.begin() as c:
                c.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except DBAPIError as e:
            raise ConfigError(
                "RECSMITH_VECTOR_INDEX=pgvector: the PostgreSQL server cannot create the "
                f"`vector` extension (pgvector not installed?): {str(e.orig).strip()[:200]}"
            ) from None
        with self.engine.begin() as c:
            kind = c.execute(
                text(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'product_vectors'::regclass AND attname = 'embedding'"
                )
            ).scalar()
            if kind != self._vec:
                # Another dimension means another encoder: its vectors cannot be kept.
                using = "embedding" if kind == "real[]" else "NULL"
                if kind != "real[]":
                    c.execute(text("DELETE FROM product_vectors"))
                c.execute(text("LOCK TABLE product_vectors IN ACCESS EXCLUSIVE MODE"))
                c.execute(text(f"DROP INDEX IF EXISTS {FILTER_INDEX}"))  # built for that dim
                c.execute(
                    text(
                        f"ALTER TABLE product_vectors ALTER COLUMN embedding TYPE {self._vec} "
                        f"USING {using}::{self._vec}"
                    )
                )
            # Category filters compare lower-cased names, as the in-process index does.
            new = not c.execute(text("SELECT to_regclass('ix_products_category_lower')")).scalar()
            c.execute(
                text(
                    "CREATE INDEX IF NOT EXISTS ix_products_category_lower "
                    "ON products (lower(category))"
                )
            )
            if new:  # the planner's row estimates for lower(category) need its statistics
                c.execute(text("ANALYZE products"))
        self.build_filter_index()
        if with_hnsw:
            self.build_hnsw()

    @property
    def covering(self) -> bool:
        """Whether the filter index holds the vectors (see COVERING_MAX_DIM)."""
        return self.dim <= COVERING_MAX_DIM

    def build_filter_index(self) -> None:
        """The btree the exact path reads (idempotent); with the vectors in its leaves when
        they fit. A bulk load drops it and builds it afterwards, like the graph."""
        include = "INCLUDE (in_stock, product_id, embedding)" if self.covering else ""
        with self.engine.begin() as c:
            if c.execute(text(f"SELECT to_regclass('{FILTER_INDEX}')")).scalar():
                return
            c.execute(
                text(f"CREATE INDEX {FILTER_INDEX} ON product_vectors (category, price) {include}")
            )
            c.execute(text("ANALYZE product_vectors"))

    def build_hnsw(self) -> None:
        with self.engine.begin() as c:
            c.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {self.index_name} ON product_vectors "
                    "USING hnsw (embedding vector_cosine_ops) "
                    f"WITH (m = {int(self.m)}, ef_construction = {int(self.ef_construction)})"
                )
            )

    # -- reads ---------------------------------------------------------------------------
    def __len__(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM product_vectors")).scalar() or 0)

    def known(self, ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return set()
        with self.engine.connect() as c:
            rows = c.execute(
                text("SELECT product_id FROM product_vectors WHERE product_id = ANY(:ids)"),
                {"ids": ids},
            )
            return {r[0] for r in rows}

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids:
            return {}
        with self.engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT product_id, embedding::real[] FROM product_vectors "
                    "WHERE product_id = ANY(:ids) AND embedding IS NOT NULL"
                ),
                {"ids": list(ids)},
            )
            return {pid: np.asarray(e, dtype=np.float32) for pid, e in rows}

    # Searches read the vector rows and their copied filter columns; `JoinedPlan` in
    # eval/bench_scale.py overrides these two to time the plan before (joined to products).
    source = "product_vectors v"
    alias = "v"

    @staticmethod
    def _where(
        filters: Filters | None, excluded: Sequence[str], alias: str = "v"
    ) -> tuple[str, dict[str, Any]]:
        """The filter as SQL over `products p` (alias "p") or `product_vectors v` ("v",
        whose category is stored lower-cased)."""
        if alias == "p":
            category, pid = "lower(p.category)", "p.id"
        else:
            category, pid = f"{alias}.category", f"{alias}.product_id"
        clauses, params = ["TRUE"], {}
        f = filters or Filters()
        if f.categories:
            clauses.append(f"{category} = ANY(:cats)")
            params["cats"] = sorted({c.lower() for c in f.categories})
        if f.min_price is not None:
            clauses.append(f"{alias}.price >= :min_price")
            params["min_price"] = f.min_price
        if f.max_price is not None:
            clauses.append(f"{alias}.price <= :max_price")
            params["max_price"] = f.max_price
        if f.in_stock_only:
            clauses.append(f"{alias}.in_stock")
        if excluded:
            clauses.append(f"{pid} <> ALL(:excluded)")
            params["excluded"] = list(excluded)
        return " AND ".join(clauses), params

    def estimate(self, filters: Filters | None) -> tuple[float, float]:
        """(rows the filter keeps, all rows): the planner's estimates, no scan."""
        where, params = self._where(filters, [], "p")
        with self.engine.connect() as c:
            total = c.execute(
                text("SELECT reltuples FROM pg_class WHERE relname = 'product_vectors'")
            ).scalar()
            plan = c.execute(
                text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM products p WHERE {where}"), params
            ).scalar()
        rows = float(plan[0]["Plan"]["Plan Rows"])
        return rows, float(total) if total and total > 0 else rows

    def _search(self, q: VectorQuery) -> Hits:
        if self.iterative:
            return self._search_iterative(q)
        ef = max(self.ef_search, q.k)
        if filters_active(q.filters):
            matching, total = self.estimate(q.filters)
            share = max(matching, 1.0) / max(total, matching, 1.0)
            ef = max(ef, math.ceil(self.filter_margin * q.k / share))
            cheaper = ef > EF_MAX or matching <= self.exact_per_ef * ef
            if matching <= self.exact_below and cheaper:
                return self.exact(q)
        ef = min(ef + len(q.excluded), EF_MAX)
        hits = self._nearest(
            q, f"v.embedding <=> CAST(:q AS {self._vec})", [f"hnsw.ef_search = {int(ef)}"]
        )
        if len(hits) < q.k and filters_active(q.filters):
            return self.exact(q)  # the graph ran dry: be exact
        return hits

    def _search_iterative(self, q: VectorQuery) -> Hits:
        """pgvector ≥ 0.8: the graph walk goes on until k rows pass the filter."""
        ef = min(max(self.ef_search, q.k), EF_MAX)
        if filters_active(q.filters):
            matching, _ = self.estimate(q.filters)
            if matching <= min(self.exact_below, self.exact_per_ef * ef):
                return self.exact(q)  # so few rows that scoring them all is cheaper
        settings = [
            f"hnsw.ef_search = {int(ef)}",
            "hnsw.iterative_scan = relaxed_order",
            f"hnsw.max_scan_tuples = {int(self.max_scan_tuples)}",
        ]
        hits = self._nearest(q, f"v.embedding <=> CAST(:q AS {self._vec})", settings)
        hits.sort(key=lambda h: (-h[1], h[0]))  # relaxed order: rows may come a little unsorted
        if len(hits) < q.k and filters_active(q.filters):
            return self.exact(q)  # the scan hit max_scan_tuples first: be exact
        return hits

    def exact(self, q: VectorQuery) -> Hits:
        """Exact search (no graph): the ground truth, and the plan for selective filters.
        `+ 0` keeps the planner off the HNSW index; the filter index's range (category,
        price) then yields the allowed rows, their vectors read from its leaves (an
        index-only scan; the table itself past COVERING_MAX_DIM)."""
        return self._nearest(q, f"{self._dist} + 0, v.product_id", self.exact_settings)

    # The plan before copying the filter columns fetched each allowed product's vector by
    # key: a hash join would read the whole vector table (77 ms vs 15 ms for 1,000 of 50k).
    exact_settings: Sequence[str] = ()

    def _nearest(self, q: VectorQuery, order_by: str, settings: Sequence[str]) -> Hits:
        """The first k allowed products by `order_by`, (id, cosine), in one transaction
        with these `SET LOCAL` planner settings."""
        where, params = self._where(q.filters, q.excluded, self.alias)
        sql = (
            f"SELECT v.product_id, 1 - {self._dist} AS score FROM {self.source} "
            f"WHERE {where} ORDER BY {order_by} LIMIT :k"
        )
        with self.engine.begin() as c:
            for setting in settings:
                c.execute(text(f"SET LOCAL {setting}"))
            rows = c.execute(text(sql), {**params, "q": _literal(q.vector), "k": q.k})
            return [(pid, float(s)) for pid, s in rows]

    def allowed(self, ids: Sequence[str], filters: Filters, excluded: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return set()
        where, params = self._where(filters, sorted(set(excluded)))
        sql = (
            f"SELECT v.product_id FROM product_vectors v WHERE v.product_id = ANY(:ids) AND {where}"
        )
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(text(sql), {**params, "ids": ids})}

    def stale(
        self, products: Sequence[Product], hashes: Mapping[str, str], model_id: str
    ) -> list[Product]:
        if not products:
            return []
        with self.engine.connect() as c:
            stored = dict(
                c.execute(
                    text(
                        "SELECT product_id, content_hash FROM product_vectors "
                        "WHERE product_id = ANY(:ids) AND model_id = :model"
                    ),
                    {"ids": [p.id for p in products], "model": model_id},
                ).all()
            )
        return [p for p in products if stored.get(p.id) != p.content_hash()]

    def stale_ids(self, model_id: str) -> list[str]:
        """Every product without a current vector (the full sync's one query)."""
        sql = (
            "SELECT p.id FROM products p LEFT JOIN product_vectors v ON v.product_id = p.id "
            "WHERE v.product_id IS NULL OR v.content_hash <> p.content_hash "
            "OR v.model_id <> :model ORDER BY p.id"
        )
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(text(sql), {"model": model_id})]

    # -- writes --------------------------------------------------------------------------
    def _write(
        self, c: Any, products: Sequence[Product], vectors: np.ndarray, model_id: str
    ) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(products), self.dim)
        rows = [
            {
                "product_id": p.id,
                "model_id": model_id,
                "content_hash": p.content_hash(),
                "embedding": v.tolist(),
            }
            for p, v in zip(products, vectors, strict=True)
        ]
        stmt = pg_insert(ProductVectorRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=["product_id"],
            set_={c: stmt.excluded[c] for c in ("model_id", "content_hash", "embedding")},
        )
        c.execute(stmt, rows)

    def write_in(
        self, session: Any, products: Sequence[Product], vectors: np.ndarray, model_id: str
    ) -> bool:
        """In the store's writing transaction (the products are written in it)."""
        if len(products):
            self._write(session, products, vectors, model_id)
        return True

    def upsert(self, products: Sequence[Product], vectors: np.ndarray, model_id: str) -> None:
        if not products:
            return
        with self.engine.begin() as c:
            # A product deleted meanwhile has no row to point at: write only living ones.
            alive = {
                r[0]
                for r in c.execute(
                    text("SELECT id FROM products WHERE id = ANY(:ids) FOR SHARE"),
                    {"ids": [p.id for p in products]},
                )
            }
            keep = [i for i, p in enumerate(products) if p.id in alive]
            if keep:
                self._write(c, [products[i] for i in keep], np.asarray(vectors)[keep], model_id)

    def set_columns(self, rows: Iterable[tuple[str, str, float | None, bool]]) -> None:
        """Nothing to copy: the database's triggers copy a product's filter columns to its
        vector row in the transaction that writes either (migration 0005)."""

    def remove(self, ids: Sequence[str]) -> None:
        if ids:
            with self.engine.begin() as c:
                c.execute(
                    text("DELETE FROM product_vectors WHERE product_id = ANY(:ids)"),
                    {"ids": list(ids)},
                )
