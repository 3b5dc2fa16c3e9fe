"""Chinese counts and "每 X" relations against the data (check_relations, pure strings).

The bad texts are what the small writer served for cof-zh-01 before this check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.catalog.models import Product
from service.copy.checks import (
    Facts,
    Limits,
    check_numbers,
    check_relations,
    data_counts,
    run_checks,
    zh_number,
)

DEMO = Path(__file__).resolve().parents[2] / "service" / "demo" / "products.jsonl"
ZH_PRODUCTS = [
    Product(**row)
    for row in (json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines() if line)
    if row.get("language") == "zh"
]
TEA = next(p for p in ZH_PRODUCTS if p.id == "cof-zh-01")
TEA_FACTS = Facts.from_products([TEA])
RICE = next(p for p in ZH_PRODUCTS if p.id == "kit-zh-01")

SERVED_SUMMARY = (
    "白瓷功夫茶具套装八件，每件含150毫升盖碗茶壶一只、40毫升品茗杯六只，另配竹制茶盘一个。"
    "适合冲泡乌龙茶、普洱和白茶，送礼自用两相宜。"
)
SERVED_BLURB = (
    "白瓷功夫茶具套装，每壶八杯，每杯品茗六只，竹制茶盘，方便冲泡乌龙茶、普洱和白茶，"
    "送礼自用两相宜。"
)


def test_the_served_summary_fails_on_its_distributive() -> None:
    r = check_relations(SERVED_SUMMARY, TEA_FACTS)
    assert not r.ok and r.name == "relations"
    assert r.found == ("每件含150毫升",)
    assert "每件含150毫升" in r.detail


def test_the_served_blurb_fails_on_each_wrong_relation() -> None:
    r = check_relations(SERVED_BLURB, TEA_FACTS)
    assert r.found == ("每壶八杯", "每杯品茗六只", "八杯")


def test_run_checks_reports_it_under_numbers() -> None:
    """Under "numbers", so the retry prompt asks for the data's numbers; the plain
    check_numbers (the chat's) is unchanged."""
    results = run_checks(
        SERVED_BLURB, TEA_FACTS, language="zh", limits=Limits(max_chars=200), banned=()
    )
    numbers = next(c for c in results if c.name == "numbers")
    assert not numbers.ok and "八杯" in numbers.found and "每壶八杯" in numbers.detail
    assert check_numbers(SERVED_BLURB, TEA_FACTS).ok
    assert not check_numbers(SERVED_BLURB, TEA_FACTS, relations=True).ok


@pytest.mark.parametrize("product", ZH_PRODUCTS, ids=lambda p: p.id)
def test_every_demo_product_passes_its_own_data(product: Product) -> None:
    facts = Facts.from_products([product])
    for text in (product.title, product.description):
        assert check_relations(text, facts).ok, check_relations(text, facts).detail
        assert check_numbers(text, facts, relations=True).ok


@pytest.mark.parametrize(
    "text",
    [
        "白瓷功夫茶具套装，一壶六杯。",
        "共8件：茶壶一只、品茗杯六只，另配竹制茶盘。",
        "共八件：150毫升茶壶1只、40毫升品茗杯6只。",  # digits for numerals
        "一套八件，六个品茗杯和一把盖碗茶壶。",  # 个/只/把: the same single objects
        "泡一杯好茶，每一口都是一种享受。",  # the article 一, and 每 without a number
        "每件都十分精致，送礼自用两相宜。",  # 十分 is "very"
        "第一杯清香，第二杯回甘。",  # ordinals
        "Eight cups per pot.",  # English is not this check's
        # What the small writer served on retry once the served texts above were caught.
        "白瓷功夫茶具套装（一壶六杯），德化白瓷釉面温润细腻，共8件：150毫升盖碗茶壶一只、"
        "40毫升品茗杯六只，另配竹制茶盘一个。",
        "白瓷功夫茶具套装一壶六杯，德化白瓷釉面温润细腻，共8件，150毫升盖碗茶壶一只、"
        "40毫升品茗杯六只，竹制茶盘一个，适合冲泡乌龙茶、普洱和白茶，送礼自用两相宜。",
    ],
)
def test_correct_relations_and_ordinary_wording_pass(text: str) -> None:
    assert check_relations(text, TEA_FACTS).ok, check_relations(text, TEA_FACTS).detail


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("一壶八杯", ("八杯",)),
        ("一壶8杯", ("8杯",)),
        ("两壶十二杯", ("两壶", "十二杯")),
        ("共10件", ("10件",)),
        ("每人一杯", ("每人一杯",)),
        ("每套含2只茶壶", ("每套含2只", "2只")),
        ("茶壶两只、品茗杯六只", ("两只",)),
    ],
)
def test_counts_the_data_does_not_hold_fail(text: str, found: tuple[str, ...]) -> None:
    assert check_relations(text, TEA_FACTS).found == found


def test_a_relation_the_data_states_passes() -> None:
    data = Facts.from_fields(["龙井绿茶 125克。每次冲泡3克，每天两次。"])
    assert check_relations("每次冲泡3克，每天两次，清香回甘。", data).ok
    assert check_relations("每一次冲泡3克。", data).ok
    r = check_relations("每杯3克。", data)
    assert r.found == ("每杯3克",)


def test_data_counts_hold_ranges_and_count_keys() -> None:
    rice = Facts.from_products([RICE])
    assert {(2, "人"), (6, "人"), (8, "种")} <= data_counts(rice.text)
    assert check_relations("适合三到五人使用，内置八种程序。", rice).ok
    assert check_relations("适合六位家人。", rice).ok  # 人 == 位
    assert check_relations("适合十人。", rice).found == ("十人",)
    keys = Facts.from_fields(["茶杯套装", "cups: 6", "pieces: 7"])
    assert check_relations("六杯七件", keys).ok


@pytest.mark.parametrize(
    ("raw", "value"),
    [("8", 8), ("八", 8), ("两", 2), ("十", 10), ("十二", 12), ("二十五", 25),
     ("两百", 200), ("一百零五", 105), ("七八", None), ("一一", None)],
)  # fmt: skip
def test_zh_number(raw: str, value: int | None) -> None:
    assert zh_number(raw) == value
