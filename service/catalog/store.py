"""The catalogue store: products and interactions over SQLAlchemy (SQLite by default)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from service.catalog.models import Interaction, Product
from service.catalog.tables import InteractionRow, ProductRow
from service.db import get_engine, session_scope
from service.errors import NotFound  # noqa: F401 - raised here, re-exported
from service.retrieval.vector_index_tables import CatalogChangeRow

log = logging.getLogger(__name__)

# Ids per SELECT ... IN (...) when comparing stored rows (well under any bound-variable limit).
_CHUNK = 500


def _row_to_product(row: ProductRow) -> Product:
    fields: dict[str, Any] = {
        "id": row.id,
        "title": row.title,
        "description": row.description or "",
        "category": row.category or "",
        "brand": row.brand or "",
        "price": row.price,
        "currency": row.currency or "USD",
        "attributes": row.attributes or {},
        "tags": row.tags or [],
        "language": row.language or "en",
        "in_stock": bool(row.in_stock),
    }
    try:
        return Product(**fields)
    except ValidationError as e:
        # A row stored before the attribute/tag bounds existed (e.g. nested 300 levels) must
        # not break every page that lists it: serve it without the offending field.
        bad = {str(x["loc"][0]) for x in e.errors() if x["loc"]}
        log.warning("product %r breaks today's bounds on %s; served without", row.id, bad)
        for name in bad & {"attributes", "tags"}:
            fields[name] = {} if name == "attributes" else []
        return Product(**fields)


class CatalogStore:
    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = get_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine

    def _insert(self):  # noqa: ANN202 - dialect-specific insert construct
        return pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert

    # -- products ---------------------------------------------------------------------
    def upsert_products(
        self,
        products: Sequence[Product],
        also: Callable[[Any, list[str]], None] | None = None,
    ) -> tuple[int, int, list[str]]:
        """Insert or update in one transaction. Returns (inserted, updated, changed_ids);
        a product whose content is identical is neither, so re-ingesting changes nothing.
        `also(session, written_ids)` runs last in the same transaction: a database vector
        index writes its rows there, so a product and its vector commit together.

        Safe under concurrent writers on SQLite and PostgreSQL: new ids go in with
        INSERT ... ON CONFLICT DO NOTHING RETURNING (the database says which rows it
        inserted, so two requests racing on one new id never hit the UNIQUE constraint),
        then the ids that already existed are read, compared, and the changed ones written
        with INSERT ... ON CONFLICT DO UPDATE. The first statement is a write, so SQLite
        holds its write lock from there on; PostgreSQL locks the compared rows FOR UPDATE.
        """
        if not products:
            return 0, 0, []
        # Last row wins when one batch repeats an id; sorted so that concurrent batches
        # lock rows in one order (no deadlock on PostgreSQL).
        by_id = {p.id: p for p in products}
        ids = sorted(by_id)
        now = datetime.utcnow()

        rows: dict[str, dict[str, Any]] = {
            pid: {**p.model_dump(), "content_hash": p.content_hash(), "updated_at": now}
            for pid, p in by_id.items()
        }
        insert = self._insert()
        add_new = (
            insert(ProductRow)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(ProductRow.id)
        )
        upsert = insert(ProductRow)
        upsert = upsert.on_conflict_do_update(
            index_elements=["id"],
            set_={
                c.name: upsert.excluded[c.name]
                for c in ProductRow.__table__.columns
                if c.name != "id"
            },
        )
        updated: list[str] = []
        with session_scope(self.engine) as s:
            # A list of parameter sets: SQLAlchemy sends multi-row INSERT ... RETURNING
            # batches from one cached statement ("insertmanyvalues").
            inserted = set(s.scalars(add_new, [rows[pid] for pid in ids]))
            rest = [pid for pid in ids if pid not in inserted]
            for i in range(0, len(rest), _CHUNK):
                chunk = rest[i : i + _CHUNK]
                query = select(ProductRow).where(ProductRow.id.in_(chunk)).order_by(ProductRow.id)
                if self.engine.dialect.name == "postgresql":
                    query = query.with_for_update()
                stored = {r.id: _row_to_product(r) for r in s.scalars(query)}
                # A row deleted since the insert above (PostgreSQL) is written again here.
                updated += [pid for pid in chunk if stored.get(pid) != by_id[pid]]
            if updated:
                s.execute(upsert, [rows[pid] for pid in updated])
            written = inserted | set(updated)
            self._log_changes(s, sorted(written), now)
            if also is not None and written:
                also(s, sorted(written))
        return len(inserted), len(updated), [pid for pid in ids if pid in written]

    def get_product(self, product_id: str) -> Product:
        with session_scope(self.engine) as s:
            row = s.get(ProductRow, product_id)
            if row is None:
                raise NotFound(f"unknown product id {product_id!r}")
            return _row_to_product(row)

    def get_products(self, ids: Iterable[str]) -> dict[str, Product]:
        ids = list(dict.fromkeys(ids))
        out: dict[str, Product] = {}
        with session_scope(self.engine) as s:
            for i in range(0, len(ids), 500):
                for row in s.scalars(select(ProductRow).where(ProductRow.id.in_(ids[i : i + 500]))):
                    out[row.id] = _row_to_product(row)
        return out

    def has_product(self, product_id: str) -> bool:
        with session_scope(self.engine) as s:
            return s.get(ProductRow, product_id) is not None

    def iter_products(
        self, category: str | None = None, limit: int | None = None, offset: int = 0
    ) -> Iterator[Product]:
        stmt = select(ProductRow).order_by(ProductRow.id)
        if category:
            stmt = stmt.where(func.lower(ProductRow.category) == category.lower())
        if offset:
            stmt = stmt.offset(offset)
        if limit is not None:
            stmt = stmt.limit(limit)
        with session_scope(self.engine) as s:
            rows = list(s.scalars(stmt))
        for row in rows:
            yield _row_to_product(row)

    def content_hashes_of(self, ids: Iterable[str]) -> dict[str, str]:
        """id -> content hash of those stored (a write's check of what changed)."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, str] = {}
        with session_scope(self.engine) as s:
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                stmt = select(ProductRow.id, ProductRow.content_hash)
                out.update(s.execute(stmt.where(ProductRow.id.in_(chunk))).tuples().all())
        return out

    def content_hashes(self) -> dict[str, str]:
        with session_scope(self.engine) as s:
            return dict(s.execute(select(ProductRow.id, ProductRow.content_hash)).all())

    def count_products(self) -> int:
        with session_scope(self.engine) as s:
            return s.scalar(select(func.count()).select_from(ProductRow)) or 0

    def delete_product(self, product_id: str) -> None:
        with session_scope(self.engine) as s:
            row = s.get(ProductRow, product_id)
            if row is None:
                raise NotFound(f"unknown product id {product_id!r}")
            s.delete(row)
            s.execute(delete(InteractionRow).where(InteractionRow.product_id == product_id))
            self._log_changes(s, [product_id], datetime.utcnow())

    # -- the change log: what every index process follows -------------------------------
    @staticmethod
    def _log_changes(s: Any, ids: Sequence[str], now: datetime) -> None:
        """In the writing transaction: readers never see a product without its change row."""
        if ids:
            s.execute(
                CatalogChangeRow.__table__.insert(), [{"product_id": i, "at": now} for i in ids]
            )

    def versions(self) -> tuple[int, int]:
        """(catalogue version, interaction log version): the newest change and event ids.
        Two primary-key lookups: cheap enough to run before every read."""
        stmt = select(
            select(func.max(CatalogChangeRow.seq)).scalar_subquery(),
            select(func.max(InteractionRow.id)).scalar_subquery(),
        )
        with session_scope(self.engine) as s:
            seq, event = s.execute(stmt).one()
        return seq or 0, event or 0

    def changes_since(self, seq: int, limit: int = 100_000) -> tuple[int, list[str], bool]:
        """(newest seq read, product ids written or deleted after `seq`, complete): complete
        is False when the log no longer reaches back to `seq` (pruned), so the caller must
        compare the whole catalogue instead."""
        rows, complete = self.change_rows(seq, limit)
        newest = rows[-1][0] if rows else seq
        return newest, list(dict.fromkeys(pid for _, pid in rows)), complete

    def change_rows(self, seq: int, limit: int = 100_000) -> tuple[list[tuple[int, str]], bool]:
        """([(seq, product id)] after `seq` in order, complete) in one statement (a write's
        incremental index path runs it every time); complete as in changes_since. With no
        row after `seq` the log is complete: its oldest row would be one."""
        oldest = select(func.min(CatalogChangeRow.seq)).scalar_subquery()
        stmt = (
            select(CatalogChangeRow.seq, CatalogChangeRow.product_id, oldest)
            .where(CatalogChangeRow.seq > seq)
            .order_by(CatalogChangeRow.seq)
            .limit(limit)
        )
        with self.engine.connect() as c:
            got = c.execute(stmt).all()
        complete = not got or (got[0][2] <= seq + 1 and len(got) < limit)
        return [(n, pid) for n, pid, _ in got], complete

    def changes_with_products(
        self, seq: int, skip: Collection[int] = (), limit: int = 100_000
    ) -> tuple[list[tuple[int, str]], dict[str, Product], bool]:
        """change_rows less the seqs in `skip` (already applied), with the current row of
        each product they name (absent: deleted), in one statement: a write's incremental
        index step reads the log and its products in one round trip."""
        oldest = select(func.min(CatalogChangeRow.seq)).scalar_subquery()
        stmt = (
            select(CatalogChangeRow.seq, CatalogChangeRow.product_id, oldest, ProductRow)
            .outerjoin(ProductRow, ProductRow.id == CatalogChangeRow.product_id)
            .where(CatalogChangeRow.seq > seq)
            .order_by(CatalogChangeRow.seq)
            .limit(limit)
        )
        if skip:
            stmt = stmt.where(CatalogChangeRow.seq.not_in(sorted(skip)))
        with session_scope(self.engine) as s:
            got = s.execute(stmt).all()
            found = {row.id: _row_to_product(row) for *_, row in got if row is not None}
            first = got[0][2] if got else None  # none after `seq`: complete
            if not got and skip:  # or every one skipped: does the log still reach `seq`?
                first = s.scalar(select(func.min(CatalogChangeRow.seq)))
        complete = (first is None or first <= seq + 1) and len(got) < limit
        return [(n, pid) for n, pid, *_ in got], found, complete

    def prune_changes(self, keep: int = 1_000_000) -> int:
        """Drop all but the newest `keep` change rows (a process further behind than that
        re-reads the catalogue's hashes once)."""
        with session_scope(self.engine) as s:
            newest = s.scalar(select(func.max(CatalogChangeRow.seq))) or 0
            res = s.execute(delete(CatalogChangeRow).where(CatalogChangeRow.seq <= newest - keep))
            return res.rowcount or 0

    def index_rows(self) -> Iterator[tuple[str, str, str, float | None, bool]]:
        """(id, content_hash, category, price, in_stock) of every product, streamed: what a
        full index sync compares and filters on, without loading whole products."""
        stmt = select(
            ProductRow.id,
            ProductRow.content_hash,
            ProductRow.category,
            ProductRow.price,
            ProductRow.in_stock,
        ).order_by(ProductRow.id)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=20_000).execute(stmt)
            for pid, h, cat, price, stock in result:
                yield pid, h or "", cat or "", price, bool(stock)

    def categories(self) -> list[str]:
        with session_scope(self.engine) as s:
            return sorted(c for c in s.scalars(select(ProductRow.category).distinct()) if c)

    # -- interactions -----------------------------------------------------------------
    def add_interactions(self, interactions: Sequence[Interaction]) -> int:
        """Append events; an event already stored (same user, product, event, ts) is skipped.
        Returns how many were new."""
        if not interactions:
            return 0
        rows = [
            {
                "user_id": i.user_id,
                "product_id": i.product_id,
                "event": i.event.value,
                "value": i.value,
                "ts": i.naive_utc_ts(),
            }
            for i in interactions
        ]
        # Counted from RETURNING: the rows this statement inserted, whatever other writers
        # append at the same time (a before/after count of the table would include theirs).
        stmt = (
            self._insert()(InteractionRow)
            .on_conflict_do_nothing(index_elements=["user_id", "product_id", "event", "ts"])
            .returning(InteractionRow.id)
        )
        with session_scope(self.engine) as s:
            return len(s.scalars(stmt, rows).all())

    def user_history(self, user_id: str, limit: int = 200) -> list[tuple[str, str, datetime]]:
        """(product_id, event, ts) oldest first, the most recent `limit` events."""
        stmt = (
            select(InteractionRow.product_id, InteractionRow.event, InteractionRow.ts)
            .where(InteractionRow.user_id == user_id)
            .order_by(InteractionRow.ts.desc(), InteractionRow.id.desc())
            .limit(limit)
        )
        with session_scope(self.engine) as s:
            rows = [tuple(r) for r in s.execute(stmt).all()]
        return list(reversed(rows))  # type: ignore[arg-type]

    def has_user(self, user_id: str) -> bool:
        with session_scope(self.engine) as s:
            return (
                s.scalar(
                    select(InteractionRow.id).where(InteractionRow.user_id == user_id).limit(1)
                )
                is not None
            )

    def purchased(self, user_id: str) -> set[str]:
        stmt = select(InteractionRow.product_id).where(
            InteractionRow.user_id == user_id, InteractionRow.event == "purchase"
        )
        with session_scope(self.engine) as s:
            return set(s.scalars(stmt))

    def all_interactions(self) -> list[tuple[str, str, str, datetime]]:
        """(user_id, product_id, event, ts) ordered by user then time: for co-interaction."""
        return [(u, p, e, ts) for _id, u, p, e, ts in self.interaction_log()]

    def events_since(self, event_id: int) -> tuple[int, list[tuple[int, str, str, str]]]:
        """(newest id read, [(id, user_id, product_id, event)]) of the events after
        `event_id`."""
        stmt = (
            select(
                InteractionRow.id,
                InteractionRow.user_id,
                InteractionRow.product_id,
                InteractionRow.event,
            )
            .where(InteractionRow.id > event_id)
            .order_by(InteractionRow.id)
        )
        with session_scope(self.engine) as s:
            rows = s.execute(stmt).all()
        newest = rows[-1][0] if rows else event_id
        return newest, [(i, u, p, e) for i, u, p, e in rows]

    def user_events(self, user_ids: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """Each user's (product_id, event), in all_interactions() order (time, then id)."""
        users = sorted(set(user_ids))
        out: dict[str, list[tuple[str, str]]] = {u: [] for u in users}
        with session_scope(self.engine) as s:
            for i in range(0, len(users), _CHUNK):
                stmt = (
                    select(InteractionRow.user_id, InteractionRow.product_id, InteractionRow.event)
                    .where(InteractionRow.user_id.in_(users[i : i + _CHUNK]))
                    .order_by(InteractionRow.user_id, InteractionRow.ts, InteractionRow.id)
                )
                for u, p, e in s.execute(stmt):
                    out[u].append((p, e))
        return out

    def interaction_log(self) -> list[tuple[int, str, str, str, datetime]]:
        """(id, user_id, product_id, event, ts) in all_interactions() order, read at once."""
        stmt = select(
            InteractionRow.id,
            InteractionRow.user_id,
            InteractionRow.product_id,
            InteractionRow.event,
            InteractionRow.ts,
        ).order_by(InteractionRow.user_id, InteractionRow.ts, InteractionRow.id)
        with session_scope(self.engine) as s:
            return [tuple(r) for r in s.execute(stmt).all()]  # type: ignore[misc]

    def count_interactions(self) -> int:
        with session_scope(self.engine) as s:
            return s.scalar(select(func.count()).select_from(InteractionRow)) or 0
