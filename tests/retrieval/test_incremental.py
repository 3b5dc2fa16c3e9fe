"""Writes touch only what changed, on SQLite and PostgreSQL: a product upsert encodes that
product's text alone (no full read of the catalogue), co-interaction follows new events and
deletions and equals a rebuild from the whole log, and two Application objects on one
database see each other's writes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.application import Application
from service.catalog.ingest import ingest_file
from service.catalog.models import Interaction, Product
from service.catalog.store import CatalogStore
from service.config import Settings
from service.retrieval.cooccur import CoInteraction
from service.retrieval.filters import Filters
from tests.foundation import DEMO
from tests.postgres import fresh_database

DATABASES = ["sqlite", "postgresql"]


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        with fresh_database() as url:
            yield url
            from service.db import get_engine

            get_engine(url).dispose()  # let the database be dropped


class CountingEncoder:
    """The real encoder, recording every text it is asked to encode (cache hits too)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, texts: Any, progress: Any = None, kind: str = "passage") -> np.ndarray:
        if kind == "passage":
            self.texts.extend(texts)
        return self.inner.encode(texts, progress, kind=kind)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One encoder for the module, its embedding cache shared (the demo is encoded once)."""
    from service.retrieval.encoder import get_encoder

    cache = tmp_path_factory.mktemp("enc") / "embeddings.sqlite"
    return get_encoder(Settings().encoder_model, 64, 256, str(cache))


def make_app(data_dir: Path, url: str, index: str, encoder: Any) -> Application:
    settings = Settings(
        data_dir=data_dir, database_url=url, vector_index=index, index_check_interval_ms=0
    )
    return Application(settings, encoder=CountingEncoder(encoder))


SETUPS = [("sqlite", "memory"), ("postgresql", "memory"), ("postgresql", "pgvector")]


@pytest.mark.parametrize(("db", "index"), SETUPS)
def test_an_upsert_encodes_only_the_changed_product(
    tmp_path: Path, db: str, index: str, encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database(db, tmp_path) as url:
        app = make_app(tmp_path / "a", url, index, encoder)
        ingest_file(app.catalog, DEMO / "products.jsonl", "products")
        first = app.sync_index()
        enc = app.engine.encoder
        assert first.encoded == first.total > 20
        app.search("warm up", k=3)  # the first read builds co-interaction from the log
        enc.texts.clear()

        # From here on no write may read the whole catalogue.
        def whole_catalogue(*_a: object, **_k: object) -> None:
            raise AssertionError("a single-product write read the whole catalogue")

        for name in ("index_rows", "content_hashes", "iter_products", "interaction_log"):
            monkeypatch.setattr(app.catalog, name, whole_catalogue)
        lantern = Product(
            id="zz-1", title="Solar powered camping lantern, 400 lumen", category="Outdoor",
            price=45, in_stock=True,
        )  # fmt: skip
        done = app.upsert_products([lantern])
        assert (done.inserted, done.index.encoded) == (1, 1)
        assert enc.texts == [lantern.embedding_text()]
        assert app.search("solar camping lantern", k=3)[0].product.id == "zz-1"

        # A price change re-encodes nothing, yet the filters see the new price at once.
        enc.texts.clear()
        app.upsert_products([lantern.model_copy(update={"price": 400.0})])
        assert enc.texts == []
        cheap = app.search("solar camping lantern", k=5, filters=Filters(max_price=100))
        assert "zz-1" not in [s.product.id for s in cheap]
        # A changed text re-encodes that product only.
        app.upsert_products([lantern.model_copy(update={"title": "Solar lantern, 800 lumen"})])
        assert len(enc.texts) == 1 and enc.texts[0].startswith("Solar lantern, 800 lumen")

        app.delete_product("zz-1")
        assert "zz-1" not in [s.product.id for s in app.search("solar lantern", k=5)]
        assert "zz-1" not in app.engine.dense


def test_pgvector_product_and_vector_commit_in_one_transaction(
    tmp_path: Path, encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text is encoded before the write; the product row, its change-log row and its
    vector row then commit together: a failing vector write leaves no product behind, and
    a successful one needs no second encode."""
    from service.retrieval.vector_index_pg import PgVectorIndex

    with database("postgresql", tmp_path) as url:
        app = make_app(tmp_path / "a", url, "pgvector", encoder)
        ingest_file(app.catalog, DEMO / "products.jsonl", "products")
        app.sync_index()
        before = app.catalog.versions()
        lantern = Product(id="zz-5", title="Solar powered camping lantern", category="Outdoor")

        def broken(*_a: object, **_k: object) -> bool:
            raise RuntimeError("vector write failed")

        with monkeypatch.context() as m:
            m.setattr(PgVectorIndex, "write_in", broken)
            with pytest.raises(RuntimeError, match="vector write failed"):
                app.upsert_products([lantern])
        assert app.catalog.get_products(["zz-5"]) == {}
        assert app.catalog.versions() == before  # no change-log row either

        enc = app.engine.encoder
        enc.texts.clear()
        upserts: list[int] = []
        real = PgVectorIndex.upsert
        monkeypatch.setattr(
            PgVectorIndex, "upsert", lambda self, p, *a: upserts.append(len(p)) or real(self, p, *a)
        )
        done = app.upsert_products([lantern])
        assert (done.inserted, done.index.encoded) == (1, 1)
        assert enc.texts == [lantern.embedding_text()] and upserts == []  # written in the tx
        assert app.engine.dense.vector("zz-5") is not None
        assert app.search("solar camping lantern", k=3)[0].product.id == "zz-5"


@pytest.mark.parametrize(("db", "index"), SETUPS)
def test_two_applications_on_one_database_see_each_others_writes(
    tmp_path: Path, db: str, index: str, encoder: Any
) -> None:
    """Two API processes (separate data directories, as on two hosts): a write through one
    is served by the other's next read, without a restart."""
    with database(db, tmp_path) as url:
        one = make_app(tmp_path / "one", url, index, encoder)
        ingest_file(one.catalog, DEMO / "products.jsonl", "products")
        ingest_file(one.catalog, DEMO / "interactions.jsonl", "interactions")
        one.sync_index()
        two = make_app(tmp_path / "two", url, index, encoder)
        two.sync_index()
        two.index.min_interval_s = 0.0
        assert "zz-9" not in [s.product.id for s in two.search("solar camping lantern", k=5)]

        lantern = Product(id="zz-9", title="Solar powered camping lantern", category="Outdoor")
        one.upsert_products([lantern])
        assert two.search("solar camping lantern", k=3)[0].product.id == "zz-9"
        one.upsert_products([lantern.model_copy(update={"in_stock": False})])
        in_stock = two.search("solar camping lantern", k=5, filters=Filters(in_stock_only=True))
        assert "zz-9" not in [s.product.id for s in in_stock]

        # Events through one reach the other's co-interaction.
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        events = [
            Interaction(user_id=f"u-new{u}", product_id=p, event="purchase", ts=t0 + timedelta(i))
            for u in range(3)
            for i, p in enumerate(["zz-9", "out-0001"])
        ]
        one.add_interactions(events)
        similar = two.similar("zz-9", k=5)
        assert "out-0001" in [s.product.id for s in similar.items]
        assert two.engine.co.popularity["zz-9"] == 9.0  # 3 purchases, weight 3

        one.delete_product("zz-9")
        assert "zz-9" not in [s.product.id for s in two.search("solar camping lantern", k=5)]
        assert "zz-9" not in two.engine.co.popularity


def _events(rng: np.random.Generator, n: int, users: int, items: int, t0: datetime) -> list:
    kinds = ["view", "view", "cart", "purchase", "rating"]
    return [
        Interaction(
            user_id=f"u{rng.integers(users)}",
            product_id=f"i{rng.integers(items):03d}",
            event=kinds[rng.integers(len(kinds))],
            # Mostly later than what came before, sometimes earlier (a late backfill).
            ts=t0 + timedelta(minutes=int(rng.integers(-2000, 3000))),
        )
        for _ in range(n)
    ]


def assert_same(a: CoInteraction, b: CoInteraction) -> None:
    assert {k: dict(v) for k, v in a.pairs.items()} == {k: dict(v) for k, v in b.pairs.items()}
    assert dict(a.popularity) == dict(b.popularity)
    ids_a, m_a = a.matrix()
    ids_b, m_b = b.matrix()
    assert ids_a == ids_b and abs(m_a - m_b).max() < 1e-12
    for user in sorted(b._seqs)[:15]:
        hist = b._seqs[user]
        weights = {p: 1.0 + i for i, p in enumerate(hist)}
        assert a.neighbours(weights, 20) == b.neighbours(weights, 20)
        assert a.recent_neighbours(hist, 20) == b.recent_neighbours(hist, 20)


@pytest.mark.parametrize("db", DATABASES)
def test_co_interaction_updated_from_new_events_equals_a_rebuild(tmp_path: Path, db: str) -> None:
    with database(db, tmp_path) as url:
        store = CatalogStore(url)
        store.upsert_products([Product(id=f"i{i:03d}", title=f"Item {i}") for i in range(40)])
        rng = np.random.default_rng(3)
        t0 = datetime(2026, 11, 1, tzinfo=UTC)
        store.add_interactions(_events(rng, 300, 25, 40, t0))
        margin = 16 if db == "postgresql" else 0  # as Recsmith uses them
        co = CoInteraction.from_store(store, margin=margin)
        for step in range(4):
            store.add_interactions(_events(rng, 80, 30, 40, t0 + timedelta(days=step)))
            touched = co.apply_events(store, margin=margin)
            assert 0 < touched <= 30
            assert_same(co, CoInteraction.from_store(store))
        assert co.apply_events(store) == 0  # nothing new: nothing re-read
        for pid in ("i005", "i017"):
            store.delete_product(pid)
        co.forget_products(store, ["i005", "i017"])
        assert_same(co, CoInteraction.from_store(store))


@pytest.mark.parametrize("db", DATABASES)
def test_the_change_log_names_only_written_products(tmp_path: Path, db: str) -> None:
    with database(db, tmp_path) as url:
        store = CatalogStore(url)
        products = [Product(id=f"c{i}", title=f"Thing {i}", price=i) for i in range(5)]
        store.upsert_products(products)
        seq, _ = store.versions()
        store.upsert_products(products)  # identical: no change, no log entry
        assert store.changes_since(seq) == (seq, [], True)
        store.upsert_products([products[1].model_copy(update={"price": 99.0}), products[2]])
        store.delete_product("c3")
        newest, ids, complete = store.changes_since(seq)
        assert (ids, complete) == (["c1", "c3"], True) and newest == store.versions()[0]
        store.prune_changes(keep=1)
        assert store.changes_since(seq)[2] is False  # pruned past it: compare everything
