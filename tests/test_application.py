"""The application layer's use cases, called directly (no HTTP): one Application over a
temporary data directory with the demo catalogue, the real store, encoder and indexes, and
fake models passed through the constructor's seams (never patched in)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from service.application import Application
from service.catalog.models import Interaction, Product
from service.config import Settings
from service.copy.store import CopyFilter
from service.copy.tasks import CopyOptions, HeadlineRequest
from service.errors import Invalid, NotFound
from service.retrieval.filters import Filters
from service.retrieval.fusion import Fusion
from service.vocab import CopyTask, RerankMode
from tests.api.support import keep_embeddings, seed_embeddings
from tests.fakes import FakeLLM, writes_names
from tests.foundation import DEMO


def _prefers_last(prompt: str, choices: Sequence[str]) -> dict[str, float]:
    return {c: float(i) for i, c in enumerate(choices)}  # the last label scores highest


@pytest.fixture(scope="module")
def seams(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FakeLLM]:
    s = Settings(data_dir=tmp_path_factory.mktemp("fake"))
    return {
        "writer_llm": FakeLLM(s, text=writes_names("The first one suits you [1].")),
        "ranker_llm": FakeLLM(s, label_scores=_prefers_last),
    }


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory, seams: dict[str, FakeLLM]
) -> Iterator[Application]:
    d = tmp_path_factory.mktemp("application")
    seed_embeddings(d)
    a = Application(Settings(data_dir=d, copy_max_retries=0), **seams)
    a.ingest(DEMO / "products.jsonl", "products")
    a.ingest(DEMO / "interactions.jsonl", "interactions")
    a.sync_index()
    keep_embeddings(d)
    yield a
    a.close(timeout_s=60)


def _a_user(app: Application) -> str:
    return next(iter(app.catalog.all_interactions()))[0]


def test_recommend_retrieves_and_explains(app: Application) -> None:
    rec = app.recommend(user_id=_a_user(app), k=5, explain=True)
    assert 0 < len(rec.items) <= 5 and rec.stages == ["retrieve", "explain"]
    assert all(i.why for i in rec.items) and not rec.degraded
    assert "total" in rec.timings_ms and "retrieve" in rec.timings_ms
    plain = app.recommend(user_id=_a_user(app), k=5)
    assert all(i.why is None for i in plain.items) and plain.stages == ["retrieve"]


def test_recommend_uses_the_ranker_llm_given_to_the_constructor(
    app: Application, seams: dict[str, FakeLLM]
) -> None:
    ranker = seams["ranker_llm"]
    before = len(ranker.calls)
    base = app.recommend(user_id=_a_user(app), k=5)
    rec = app.recommend(user_id=_a_user(app), k=5, rerank=RerankMode.verbalizer)
    assert len(ranker.calls) > before, "the fake ranker was not called"
    assert rec.stages == ["retrieve", "rerank:verbalizer"] and not rec.degraded
    assert rec.model_id == "fake-model"
    assert [i.product_id for i in rec.items] != [i.product_id for i in base.items]


def test_recommend_with_headline_uses_the_writer_llm(app: Application) -> None:
    rec = app.recommend(query="coffee", k=3, headline=True)
    assert rec.headline is not None and rec.headline.model_id == "fake-model"
    assert "headline" in rec.stages and all(i.fit is not None for i in rec.items)


def test_unknown_ids_are_refused_once_naming_the_field(app: Application) -> None:
    with pytest.raises(NotFound) as e:
        app.recommend(user_id="nobody-here", k=3)
    assert e.value.fields == [("user_id", "unknown user")]
    with pytest.raises(NotFound) as e:
        app.recommend(history=["kit-0001", "no-such"], k=3)
    assert e.value.fields == [("history[1]", "unknown product id")]
    # A new user with a query is fine: the query gives retrieval something to go on.
    assert app.recommend(user_id="nobody-here", query="tent", k=3).items
    with pytest.raises(NotFound):
        app.similar("no-such")
    with pytest.raises(NotFound):
        app.get_product("no-such")


def test_search_similar_and_pages(app: Application) -> None:
    found = app.search("espresso", k=3)
    assert found and all(s.product.id and s.candidate.score for s in found)
    kitchen = app.search("pan", k=5, filters=Filters(categories=["Kitchen"]))
    assert all(s.product.category == "Kitchen" for s in kitchen)
    page = app.search_page("espresso", limit=2)
    assert len(page.items) == 2 and page.next_offset == 2 and page.total is None
    sim = app.similar(found[0].product.id, k=4)
    assert sim.items and found[0].product.id not in [s.product.id for s in sim.items]
    listed = app.list_products(limit=3)
    assert len(listed.items) == 3 and listed.total and listed.next_offset == 3


def test_catalogue_writes_are_indexed_at_once(app: Application) -> None:
    p = Product(id="app-test-1", title="Zyxquor lantern", category="Outdoor & Camping")
    up = app.upsert_products([p])
    assert (up.inserted, up.updated, up.unchanged) == (1, 0, 0) and up.index is not None
    assert app.search("Zyxquor lantern", k=1)[0].product.id == "app-test-1"
    assert app.upsert_products([p]).unchanged == 1
    added = app.add_interactions(
        [
            Interaction(user_id="app-user", product_id="app-test-1", event="view"),
            Interaction(user_id="app-user", product_id="no-such", event="view"),
        ]
    )
    assert added.added == 1 and added.unknown == [1]
    with pytest.raises(Invalid) as e:
        app.add_interactions([Interaction(user_id="u", product_id="no-such", event="view")])
    assert e.value.fields == [("interactions[0].product_id", "unknown product id")]
    app.delete_product("app-test-1")
    with pytest.raises(NotFound):
        app.get_product("app-test-1")


def test_copy_write_review_export(app: Application) -> None:
    [[title]] = app.write_copy(CopyTask.title, ["kit-0001"], CopyOptions(max_words=12))
    assert title.passed and title.text and title.model_id == "fake-model"
    assert app.get_copy(title.id).id == title.id
    again = app.write_copy(CopyTask.title, ["kit-0001"], CopyOptions(max_words=12))
    assert again[0][0].cached
    with pytest.raises(NotFound) as e:
        app.write_copy(CopyTask.title, ["kit-0001", "no-such"])
    assert e.value.fields == [("product_ids[1]", "unknown product id")]
    with pytest.raises(Invalid) as e:
        app.approve_copy(title.id, "Guaranteed to cure insomnia")
    assert e.value.fields[0][0] == "text"
    assert app.approve_copy(title.id).status == "approved"
    assert title.id in [r.id for r in app.export_copy(CopyFilter(status="approved"))]
    assert app.reject_copy(title.id, "no").status == "rejected"
    with pytest.raises(NotFound) as e:
        app.get_copy(10**9)
    assert e.value.fields == [("copy_id", "unknown copy id")]
    h = app.headline(HeadlineRequest(product_ids=["kit-0001"], interests=["cooking"]))
    assert h.headline.text and [i.product_id for i in h.items] == ["kit-0001"]
    with pytest.raises(NotFound) as e:
        app.headline(HeadlineRequest(product_ids=["kit-0001"], user_id="nobody-here"))
    assert e.value.fields == [("user_id", "unknown")]


def test_copy_jobs_start_and_cancel(app: Application) -> None:
    started = app.start_copy_job(CopyTask.title, category="Kitchen", limit=2, batch_size=1)
    assert not started.reused and started.job.total == 2
    assert app.get_copy_job(started.job.id).id == started.job.id
    assert started.job.id in [j.id for j in app.list_copy_jobs()]
    app.cancel_copy_job(started.job.id)
    with pytest.raises(NotFound) as e:
        app.get_copy_job(10**9)
    assert e.value.fields == [("job_id", "unknown job")]


def test_chat_turn_and_conversation(app: Application) -> None:
    events = list(app.chat("a tent for two people"))
    final = events[-1]
    assert final["type"] == "final" and final["products"], final
    conv = app.conversation(final["conversation_id"])
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    with pytest.raises(Invalid):
        app.chat("   ")
    with pytest.raises(NotFound):
        app.chat("more", conversation_id="no-such-conversation")


def test_the_fusion_seam_replaces_the_artefact(tmp_path: Path) -> None:
    fusion = Fusion(rank_weights={"dense_query": 1.0, "lexical": 0.5})
    a = Application(Settings(data_dir=tmp_path), fusion=fusion)
    assert a.engine.retriever.fusion is fusion
    assert a.engine.fusion_status is not None and a.engine.fusion_status.state == "fitted"


def test_a_corrupt_fusion_artefact_serves_default_weights_marked_degraded(
    tmp_path: Path, app: Application
) -> None:
    """The retrieval stage says so when its fitted fusion could not be used."""
    bad = tmp_path / "fusion.json"
    bad.write_text("{not json")
    s = app.settings.model_copy(update={"fusion_path": bad})
    other = Application(s)
    try:
        user = _a_user(app)
        rec = other.recommend(user_id=user, k=5)
        ok = app.recommend(user_id=user, k=5)
    finally:
        other.close(timeout_s=10)
    assert [i.product_id for i in rec.items] == [i.product_id for i in ok.items]
    assert rec.degraded and "fusion" in rec.degraded_stages
    assert "default fusion weights" in (rec.degraded_reason or "")
    assert not ok.degraded
