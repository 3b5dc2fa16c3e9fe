"""BM25 that reads Chinese: CJK bigrams beside the English FTS5 table, and old files migrate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.catalog.models import Product
from service.retrieval.lexical import FORMAT_VERSION, LexicalIndex, cjk_query_terms
from tests.foundation import make_recsmith

PRODUCTS = [
    Product(
        id="kit-zh-01",
        title="智能电饭煲 1.8升",
        description="这款电饭煲容量为1.8升，适合2-6人的家庭日常使用。内置8种烹饪程序。",
        category="Kitchen",
        tags=["rice cooker", "电饭煲"],
    ),
    Product(
        id="kit-zh-02",
        title="传统手工铁锅 34厘米",
        description="这口34厘米铁锅由碳钢手工锤打而成，适合爆炒和煎炸。",
        category="Kitchen",
        tags=["wok", "铁锅"],
    ),
    Product(
        id="cof-zh-02",
        title="明前西湖龙井绿茶 125克",
        description="产自杭州西湖产区的明前龙井，扁平光滑，色泽嫩绿，带有清新的豆香。",
        category="Coffee & Tea",
        tags=["green tea", "龙井"],
    ),
    Product(
        id="cof-0005",
        title="Glass French Press, 1 L",
        description="Borosilicate glass coffee press with a stainless steel plunger.",
        category="Coffee & Tea",
    ),
    Product(
        id="kit-0003",
        title="Carbon Steel Frying Pan, 28 cm",
        description="A carbon steel pan for searing and stir frying.",
        category="Kitchen",
    ),
]


@pytest.fixture()
def index(tmp_path: Path) -> LexicalIndex:
    lex = LexicalIndex(tmp_path / "lexical.sqlite")
    lex.upsert(PRODUCTS)
    return lex


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("铁锅", "kit-zh-02"),  # 2 characters: a trigram MATCH could not find this at all
        ("电饭煲", "kit-zh-01"),  # 3, inside the run 智能电饭煲 (one unicode61 token)
        ("龙井绿茶", "cof-zh-02"),  # 4
        ("西湖的龙井", "cof-zh-02"),  # a particle in the middle: shares 西湖 and 龙井
        ("推荐一个电饭煲", "kit-zh-01"),  # a sentence around the product word
    ],
)
def test_chinese_query_finds_the_chinese_product(
    index: LexicalIndex, query: str, expected: str
) -> None:
    hits = index.search(query, 5)
    assert hits and hits[0][0] == expected, hits


def test_english_unchanged(index: LexicalIndex) -> None:
    assert index.search("french press", 5)[0][0] == "cof-0005"
    assert index.search("stir frying", 5)[0][0] == "kit-0003"  # porter: frying → fri
    assert index.search("a", 5) == []  # single ASCII letters are still dropped


def test_mixed_query_adds_both_sides(index: LexicalIndex) -> None:
    hits = dict(index.search("wok 铁锅", 5))
    assert max(hits, key=hits.__getitem__) == "kit-zh-02"
    only_zh = dict(index.search("铁锅", 5))
    assert hits["kit-zh-02"] > only_zh["kit-zh-02"]


def test_query_text_is_never_fts_syntax(index: LexicalIndex) -> None:
    assert index.search('铁锅" OR "x', 5)[0][0] == "kit-zh-02"
    assert cjk_query_terms("茶") == ["茶"]
    assert cjk_query_terms("龙井绿茶") == ["龙井", "井绿", "绿茶"]


def test_remove_drops_both_tables(index: LexicalIndex) -> None:
    index.remove(["kit-zh-02"])
    assert index.search("铁锅", 5) == []
    assert index.count() == len(PRODUCTS) - 1


def _downgrade_to_v1(path: Path) -> None:
    """What a lexical.sqlite written before the CJK table looks like."""
    db = sqlite3.connect(str(path))
    db.execute("DROP TABLE docs_cjk")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()


def test_old_file_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "lexical.sqlite"
    LexicalIndex(path).upsert(PRODUCTS)
    _downgrade_to_v1(path)
    lex = LexicalIndex(path)
    assert lex.rebuilt and lex.count() == 0
    assert sqlite3.connect(str(path)).execute("PRAGMA user_version").fetchone()[0] == (
        FORMAT_VERSION
    )
    assert not LexicalIndex(path).rebuilt  # current format: kept as it is


def test_indexer_refills_a_migrated_index_without_encoding(tmp_path: Path) -> None:
    rs = make_recsmith(tmp_path)
    n = rs.lexical.count()
    assert rs.lexical.search("铁锅", 3)[0][0] == "kit-zh-02"
    _downgrade_to_v1(rs.index_dir / "lexical.sqlite")
    again = make_recsmith(tmp_path, demo=False)
    report = again.sync_index()
    assert again.lexical.count() == n
    assert again.lexical.search("铁锅", 3)[0][0] == "kit-zh-02"
    assert report.encoded == 0 and report.model_calls == 0  # the dense index was intact
