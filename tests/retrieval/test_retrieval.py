"""Retrieval on the demo catalogue: obvious queries find the obvious products; filters hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.catalog.ingest import ingest_file
from service.catalog.store import NotFound
from service.recsmith import Recsmith
from service.retrieval.filters import Filters
from service.retrieval.retriever import RetrievalRequest
from tests.foundation import make_recsmith


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> Recsmith:
    return make_recsmith(tmp_path_factory.mktemp("retrieval"))


def ids(rs: Recsmith, **kw: object) -> list[str]:
    return [c.product_id for c in rs.candidates(RetrievalRequest(**kw))]


def titles(rs: Recsmith, pids: list[str]) -> list[str]:
    products = rs.store.get_products(pids)
    return [products[p].title.lower() for p in pids]


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ("espresso machine", "espresso"),
        ("french press coffee", "french press"),
        ("waterproof hiking jacket", "jacket"),
        ("noise cancelling headphones", "headphone"),
        ("tent for two people", "tent"),
        ("bed for my dog", "dog bed"),
    ],
)
def test_query_finds_the_obvious_products(rs: Recsmith, query: str, word: str) -> None:
    top = titles(rs, ids(rs, query=query, k=5))
    assert word in top[0], top
    assert sum(word in t for t in top[:3]) >= 2, top


def test_each_candidate_carries_its_sources(rs: Recsmith) -> None:
    cands = rs.candidates(RetrievalRequest(query="espresso machine", k=5))
    assert any({"dense_query", "lexical"} <= set(c.sources) for c in cands)
    assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)


def test_filters_hold(rs: Recsmith) -> None:
    f = Filters(categories=["Audio"], min_price=50, max_price=300, in_stock_only=True)
    cands = rs.candidates(RetrievalRequest(query="headphones", k=20, filters=f))
    products = rs.store.get_products([c.product_id for c in cands])
    assert cands
    for p in products.values():
        assert p.category == "Audio" and p.in_stock and 50 <= (p.price or 0) <= 300
    # Out-of-stock items exist in the catalogue and are excluded only when asked.
    all_audio = ids(rs, query="headphones", k=50, filters=Filters(categories=["Audio"]))
    assert any(not rs.store.get_product(p).in_stock for p in all_audio)


def test_similar_items(rs: Recsmith) -> None:
    top = ids(rs, seed_product_id="pet-0002", k=5)
    assert "pet-0002" not in top
    assert {"pet-0001", "pet-0003"} & set(top[:3])


def test_user_history_recommendations_follow_taste(rs: Recsmith) -> None:
    history = rs.history("u-alice")
    assert history
    cands = ids(rs, user_id="u-alice", k=10)
    cats = [rs.store.get_product(p).category for p in cands]
    assert sum(c in {"Coffee & Tea", "Kitchen"} for c in cats) >= 7, cats
    purchased = rs.store.purchased("u-alice")
    assert purchased and not purchased & set(cands)
    kept = ids(rs, user_id="u-alice", k=200, filters=Filters(exclude_purchased=False))
    assert purchased & set(kept)


def test_co_interaction_signal_is_used(rs: Recsmith) -> None:
    cands = rs.candidates(RetrievalRequest(user_id="u-bob", k=20))
    assert any("co_interaction" in c.sources for c in cands)


def test_unknown_ids_give_clear_errors(rs: Recsmith) -> None:
    with pytest.raises(NotFound, match="unknown user id 'nobody'"):
        rs.candidates(RetrievalRequest(user_id="nobody"))
    with pytest.raises(NotFound, match="no-such"):
        rs.candidates(RetrievalRequest(seed_product_id="no-such"))
    with pytest.raises(NotFound, match="history"):
        rs.candidates(RetrievalRequest(history=["cof-0001", "ghost-1"]))
    with pytest.raises(ValueError, match="at least one"):
        RetrievalRequest()
    with pytest.raises(ValueError, match="min_price"):
        Filters(min_price=10, max_price=5)


def test_incremental_index_and_persistence(tmp_path: Path) -> None:
    rs = make_recsmith(tmp_path / "d")
    n = rs.dense.ids.__len__()
    again = rs.sync_index()
    assert again.encoded == 0 and again.model_calls == 0
    # A changed product is re-encoded; an unchanged catalogue re-opened costs nothing.
    new = tmp_path / "new.jsonl"
    new.write_text(
        '{"id": "zz-1", "title": "Solar powered camping lantern 400 lumen", '
        '"category": "Outdoor & Camping", "price": 45}\n'
    )
    ingest_file(rs.store, new, "products")
    report = rs.sync_index()
    assert (report.encoded, len(rs.dense)) == (1, n + 1)
    assert ids(rs, query="solar lantern", k=3)[0] == "zz-1"
    reopened = Recsmith(rs.settings)
    assert reopened.sync_index().model_calls == 0
    assert len(reopened.dense) == n + 1
    rs.store.delete_product("zz-1")
    assert rs.sync_index().removed == 1 and "zz-1" not in ids(rs, query="solar lantern", k=3)
