"""A Chinese question finds the right product through the assistant's query path, with the
multilingual encoder: an English-only kind of product ("推荐一款咖啡机": the demo has no
Chinese coffee machine) through the query's English words, each Chinese product through
its own words, and English questions as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.assistant.chat import Assistant
from service.assistant.glossary import translate_terms
from service.assistant.query import build_query, fuse_crosslingual
from service.catalog.ingest import ingest_file
from service.retrieval.prepare_encoder import prepare_encoder
from service.retrieval.retriever import RetrievalRequest
from tests.foundation import DEMO, ZH_QUERIES, make_recsmith

RANGES = ("kit", "cof", "lig", "out")
COFFEE_MACHINES = {"cof-0001", "cof-0002", "cof-0003", "cof-0004", "cof-0011"}


@pytest.fixture(scope="module")
def assistant(tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    """The 6 Chinese products with the kitchen, coffee, lighting and outdoor ranges."""
    folder = prepare_encoder("e5-small", out_root=Path(os.environ["RECSMITH_MODELS_DIR"]))
    tmp = tmp_path_factory.mktemp("xling")
    lines = [
        line
        for line in (DEMO / "products.jsonl").read_text().splitlines()
        if "-zh-" in line or line.startswith(tuple(f'{{"id": "{r}-' for r in RANGES))
    ]
    (tmp / "p.jsonl").write_text("\n".join(lines) + "\n")
    rs = make_recsmith(tmp, demo=False, encoder_model=str(folder))
    ingest_file(rs.store, tmp / "p.jsonl", "products")
    rs.sync_index()
    return Assistant(rs)


def _top(assistant: Assistant, message: str, k: int = 4) -> list[str]:
    products, _scores, _used = assistant._retrieve(build_query(message, None), None, k)
    return [p.id for p in products]


def test_coffee_machine_in_chinese_finds_a_coffee_machine(assistant: Assistant) -> None:
    top = _top(assistant, "推荐一款咖啡机")
    assert top[0] in COFFEE_MACHINES, top


def test_each_chinese_product_in_the_top_3_for_its_chinese_question(
    assistant: Assistant,
) -> None:
    for query, pid in ZH_QUERIES.items():
        top = _top(assistant, query)
        assert pid in top[:3], (query, top)


def test_a_common_chinese_word_does_not_hand_the_lead_to_chinese_products(
    assistant: Assistant,
) -> None:
    # "适合" (suitable for) is in several Chinese descriptions, but none names camping:
    # the translation's list leads (it found a desk lamp and a tea set before).
    top = _top(assistant, "适合露营的装备")
    assert all(pid.startswith("out-") for pid in top[:3]), top


def test_english_questions_unchanged(assistant: Assistant) -> None:
    for q in ("french press", "a knife for vegetables", "espresso machine"):
        tq = build_query(q, None)
        assert tq.cross == ""
        req = RetrievalRequest(query=tq.text, k=4)
        before = [c.product_id for c in assistant.rs.candidates(req)]
        assert _top(assistant, q) == before, q


def test_glossary_and_fusion_rules() -> None:
    assert translate_terms("咖啡机") == "coffee machine espresso maker"
    assert translate_terms("推荐一款") == ""
    assert "tea" in translate_terms("春天的新茶").split()
    # No lexical match for the Chinese words: the translation's list leads.
    native = [("zh-1", {"dense_query": 0.8}), ("zh-2", {"dense_query": 0.7})]
    cross = [("en-1", {"dense_query": 0.9, "lexical": 3.0}), ("zh-2", {"dense_query": 0.6})]
    assert fuse_crosslingual(native, cross)[:2] == ["zh-2", "en-1"]
    # A Chinese product that names the thing keeps the lead over the translation's guess.
    native[0][1]["lexical"] = 2.0
    assert fuse_crosslingual(native, [("en-1", {}), ("en-2", {})])[0] == "zh-1"
