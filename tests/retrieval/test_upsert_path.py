"""The single-product upsert path does only the work of that product (issue 14: ≤ 50 ms end
to end): SQLite files run WAL + synchronous=NORMAL (no fsync per commit; a process crash
loses nothing committed), a lexical write replaces rows by rowid (its cost does not grow
with the index), a write re-reads no earlier change of the log and no stored hash, and a
product is found by lexical and dense search when the call returns — also when another
writer's earlier change-log row commits after it (PostgreSQL)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from service.catalog.ingest import ingest_file
from service.catalog.models import Product
from service.db import get_engine
from service.retrieval.encoder import EmbeddingCache
from service.retrieval.lexical import LexicalIndex
from tests.foundation import DEMO
from tests.retrieval.test_incremental import SETUPS, database, encoder, make_app

__all__ = ["encoder"]  # the module-scoped fixture, shared with test_incremental

NORMAL = 1  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL


def _pragmas(conn: Any) -> tuple[str, int]:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return mode, conn.execute("PRAGMA synchronous").fetchone()[0]


def test_sqlite_files_run_wal_with_synchronous_normal(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'store.db'}")
    with engine.connect() as c:
        assert _pragmas(c.connection.dbapi_connection) == ("wal", NORMAL)
    assert _pragmas(LexicalIndex(tmp_path / "lexical.sqlite")._db) == ("wal", NORMAL)
    assert _pragmas(EmbeddingCache(tmp_path / "emb.sqlite")._db) == ("wal", NORMAL)


def test_committed_lexical_rows_survive_a_killed_process(tmp_path: Path) -> None:
    """NORMAL drops only the fsync: a commit is in the WAL when upsert returns, so another
    connection (a restarted process) reads it without any checkpoint or clean close."""
    path = tmp_path / "lexical.sqlite"
    lex = LexicalIndex(path)
    lex.upsert([Product(id="p1", title="Solar powered camping lantern")])
    # No close, no checkpoint: what a process killed now would leave on disk.
    reader = sqlite3.connect(str(path))
    assert reader.execute("SELECT id FROM docs").fetchall() == [("p1",)]


def _steps(lex: LexicalIndex, product: Product) -> int:
    """SQLite virtual-machine steps (in thousands) one single-product upsert takes."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    lex._db.set_progress_handler(tick, 1000)
    lex.upsert([product])
    lex._db.set_progress_handler(None, 1000)
    return count[0]


def _products(n: int) -> list[Product]:
    return [
        Product(id=f"p{i:05d}", title=f"Camping lantern model {i}", description="x " * 40)
        for i in range(n)
    ]


def test_a_lexical_write_does_not_grow_with_the_index(tmp_path: Path) -> None:
    """Before: DELETE ... WHERE id = ? on FTS5's UNINDEXED column read every row."""
    small, large = LexicalIndex(tmp_path / "s.sqlite"), LexicalIndex(tmp_path / "l.sqlite")
    small.upsert(_products(200))
    large.upsert(_products(8000))
    changed = Product(id="p00100", title="Brass storm lantern", description="x " * 40)
    steps_small, steps_large = _steps(small, changed), _steps(large, changed)
    assert steps_large <= steps_small + 5, (steps_small, steps_large)
    for lex in (small, large):
        assert lex.search("brass storm", 3)[0][0] == "p00100"
        assert "p00100" not in [pid for pid, _ in lex.search("model 100", 50)]
        assert lex.count() in (200, 8000)  # replaced, not added


def test_a_repeated_id_in_one_batch_keeps_the_last(tmp_path: Path) -> None:
    lex = LexicalIndex(tmp_path / "lexical.sqlite")
    one = Product(id="p1", title="Copper kettle")
    lex.upsert([one, one.model_copy(update={"title": "Enamel kettle"})])
    assert lex.count() == 1
    assert lex.search("enamel", 3)[0][0] == "p1" and lex.search("copper", 3) == []
    lex.remove(["p1"])
    assert lex.count() == 0 and lex.search("enamel", 3) == []


class Statements:
    """SQL statements sent to the store's database (each one a round trip)."""

    def __init__(self, engine: Any) -> None:
        self.sql: list[str] = []
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        self.sql.append(statement)


@pytest.mark.parametrize(("db", "index"), SETUPS)
def test_an_upsert_rereads_nothing_and_is_found_at_once(
    tmp_path: Path, db: str, index: str, encoder: Any
) -> None:
    with database(db, tmp_path) as url:
        app = make_app(tmp_path / "a", url, index, encoder)
        ingest_file(app.catalog, DEMO / "products.jsonl", "products")
        app.sync_index()
        read: list[list[str]] = []  # the products each write's indexing step read
        real = app.catalog.changes_with_products

        def reading(*a: Any) -> Any:
            rows, found, complete = real(*a)
            read.append(sorted(found))
            return rows, found, complete

        app.catalog.changes_with_products = reading  # type: ignore[method-assign]
        sent = Statements(app.catalog.engine)
        for n in range(3):
            lantern = Product(
                id=f"zz-{n}", title=f"Solar powered camping lantern {n}00 lumen",
                category="Outdoor", price=45, in_stock=True,
            )  # fmt: skip
            sent.sql.clear()
            app.upsert_products([lantern])
            # The indexing step reads this write's product only (PostgreSQL re-reads the
            # log's last entries, as commits may land out of order, but skips those applied).
            assert read[-1] == [lantern.id], read
            hashes = [s for s in sent.sql if "content_hash FROM products" in " ".join(s.split())]
            assert hashes == [], "the changed text is known from what this process indexed"
            assert app.engine.lexical.search(lantern.title, 3)[0][0] == lantern.id
            hits = app.engine.dense.search(app.engine.encoder.encode_queries([lantern.title])[0], 3)
            assert lantern.id in [pid for pid, _ in hits]
        assert len(read) == 3


def test_an_earlier_change_committed_late_is_still_applied(tmp_path: Path, encoder: Any) -> None:
    """PostgreSQL hands out change-log seqs at insert, not commit: a write that took seq n
    and commits after seq n+1 was applied must still reach this process's indexes."""
    with database("postgresql", tmp_path) as url:
        app = make_app(tmp_path / "a", url, "memory", encoder)
        ingest_file(app.catalog, DEMO / "products.jsonl", "products")
        app.sync_index()
        logged, release = threading.Event(), threading.Event()

        def hold(_session: Any, _written: list[str]) -> None:
            logged.set()  # its change row is inserted: its seq is taken, not committed
            release.wait(30)

        slow = Product(id="zz-slow", title="Brass storm lantern", category="Outdoor")
        writer = threading.Thread(target=app.catalog.upsert_products, args=([slow], hold))
        writer.start()
        assert logged.wait(30)
        fast = Product(id="zz-fast", title="Solar powered camping lantern", category="Outdoor")
        app.upsert_products([fast])  # a later seq, committed and applied first
        assert app.engine.lexical.search("solar camping lantern", 3)[0][0] == "zz-fast"
        release.set()
        writer.join(30)
        app.index.apply_changes()
        assert app.engine.lexical.search("brass storm lantern", 3)[0][0] == "zz-slow"
        assert "zz-slow" in app.engine.dense


@pytest.mark.parametrize(("db", "index"), SETUPS)
def test_an_encoding_error_leaves_nothing_written(
    tmp_path: Path, db: str, index: str, encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the text is encoded beside the transaction's statements: the
    transaction waits for it, so a failed encoding still rolls the write back."""
    with database(db, tmp_path) as url:
        app = make_app(tmp_path / "a", url, index, encoder)
        ingest_file(app.catalog, DEMO / "products.jsonl", "products")
        app.sync_index()
        before = app.catalog.versions()

        def broken(*_a: object, **_k: object) -> None:
            raise RuntimeError("encoder failed")

        monkeypatch.setattr(app.engine.encoder, "encode", broken)
        lantern = Product(id="zz-e", title="Solar powered camping lantern", category="Outdoor")
        with pytest.raises(RuntimeError, match="encoder failed"):
            app.upsert_products([lantern])
        assert app.catalog.get_products(["zz-e"]) == {}
        assert app.catalog.versions() == before


def test_the_one_statement_change_read_reports_a_pruned_log(tmp_path: Path) -> None:
    from service.catalog.store import CatalogStore

    store = CatalogStore(f"sqlite:///{tmp_path / 'store.db'}")
    for n in range(4):
        store.upsert_products([Product(id=f"p{n}", title=f"Lantern {n}")])
    store.delete_product("p0")
    rows, found, complete = store.changes_with_products(0)
    assert [pid for _, pid in rows] == ["p0", "p1", "p2", "p3", "p0"] and complete
    assert sorted(found) == ["p1", "p2", "p3"]  # p0 deleted: no row
    applied = {n for n, _ in rows[:4]}
    rows, found, complete = store.changes_with_products(0, applied)
    assert [pid for _, pid in rows] == ["p0"] and found == {} and complete
    store.prune_changes(keep=2)
    assert store.changes_with_products(1)[2] is False  # pruned past it: compare everything
    assert store.changes_with_products(1, {4, 5})[2] is False  # also when all are skipped
    assert store.changes_with_products(3)[2] is True
