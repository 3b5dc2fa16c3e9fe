"""Conversation → retrieval query rules (no model, no index)."""

from __future__ import annotations

from service.assistant.query import PreviousTurn, build_query, is_follow_up
from service.catalog.models import Product
from service.retrieval.filters import Filters

SKILLETS = [
    Product(id="kit-0001", title="Skillet 26", price=39.95, category="Kitchen"),
    Product(id="kit-0002", title="Skillet 30", price=54.0, category="Kitchen"),
    Product(id="fit-0004", title="Kettlebell", price=69.0, category="Fitness"),
]
PREV = PreviousTurn(topic="cast iron skillet for steak", products=SKILLETS)


def test_a_first_message_is_searched_as_typed_minus_price_talk() -> None:
    q = build_query("wireless earbuds for running under $80", None)
    assert q.text == "wireless earbuds for running" and not q.follow_up
    assert q.attempts[0].max_price == 80 and q.derived == {"max_price": 80.0}


def test_cheaper_keeps_the_topic_and_category_and_goes_below_what_was_shown() -> None:
    q = build_query("cheaper ones?", PREV)
    assert q.follow_up and q.text == "cast iron skillet for steak"
    first = q.attempts[0]
    assert first.categories == ["Kitchen"] and first.max_price == 39.94
    # Relaxed in order: the loose price, no derived price, then no derived category.
    assert [a.max_price for a in q.attempts] == [39.94, 68.99, None, None]
    assert [a.categories for a in q.attempts][-1] == []


def test_follow_ups_add_their_new_words_to_the_topic() -> None:
    q = build_query("what about enamelled ones?", PREV)
    assert q.follow_up and q.text == "cast iron skillet for steak enamelled"
    q = build_query("any in stock?", PREV)
    assert q.follow_up and q.attempts[0].in_stock_only


def test_a_new_topic_starts_afresh() -> None:
    assert not is_follow_up("show me running shoes", True)
    assert not is_follow_up("推荐一个铁锅", True)
    q = build_query("running shoes for trails", PREV)
    assert not q.follow_up and q.text == "running shoes for trails"
    assert q.attempts == [Filters()]


def test_the_callers_filters_win() -> None:
    base = Filters(max_price=30, categories=["Kitchen"])
    q = build_query("cheaper ones under $100", PREV, base)
    assert q.attempts[0].max_price == 30 and q.attempts[0].categories == ["Kitchen"]
    assert all(a.max_price == 30 for a in q.attempts)


def test_between_and_pricier() -> None:
    q = build_query("a kettle between 20 and 50 dollars", None)
    assert (q.attempts[0].min_price, q.attempts[0].max_price) == (20, 50)
    q = build_query("something pricier?", PREV)
    assert q.attempts[0].min_price == 69.01


# -- Chinese (issue 10): the same follow-up rules ------------------------------------------
MACHINES = [
    Product(id="cof-0001", title="Espresso Machine", price=249.0, category="Coffee & Tea"),
    Product(id="cof-0002", title="Drip Coffee Maker", price=89.0, category="Coffee & Tea"),
]
PREV_ZH = PreviousTurn(topic="咖啡机", products=MACHINES)


def test_a_chinese_cheaper_follow_up_keeps_the_topic_and_goes_below() -> None:
    for message in ("有便宜点的吗？", "还有更便宜的吗", "有没有实惠一点的？"):
        q = build_query(message, PREV_ZH)
        assert q.follow_up, message
        assert q.text == "咖啡机", message
        assert q.attempts[0].max_price == 88.99 and q.attempts[0].categories == ["Coffee & Tea"]


def test_chinese_price_bounds_and_stock() -> None:
    q = build_query("100元以下的茶具", None)
    assert q.attempts[0].max_price == 100 and not q.follow_up and "茶具" in q.text
    q = build_query("50到80元之间的茶壶", None)
    assert (q.attempts[0].min_price, q.attempts[0].max_price) == (50, 80)
    q = build_query("那有没有更贵一点的", PREV_ZH)
    assert q.follow_up and q.attempts[0].min_price == 249.01
    q = build_query("有货的吗", PREV_ZH)
    assert q.follow_up and q.attempts[0].in_stock_only


def test_a_new_chinese_topic_is_not_a_follow_up() -> None:
    q = build_query("推荐一款铁锅", PREV_ZH)
    assert not q.follow_up and q.text == "铁锅"  # searched by its content words
    assert not is_follow_up("推荐一款咖啡机", False)


def test_english_follow_up_still_works_after_a_chinese_turn() -> None:
    q = build_query("a cheaper one?", PREV_ZH)
    assert q.follow_up and q.attempts[0].max_price == 88.99
