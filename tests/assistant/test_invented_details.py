"""Chat answers are checked like copy: a sentence that invents numbers, attributes or praise
the cited products' data does not hold is removed, and an answer with nothing grounded left
is replaced by the templated answer built from the data."""

from __future__ import annotations

from service.assistant.chat import Assistant
from service.assistant.grounding import Labels, check_details
from service.catalog.models import Product
from service.config import Settings
from service.recsmith import Recsmith
from tests.assistant.conftest import ScriptedLLM, run_turn

CLAIMS = Settings().unsupported_claims
TEA = Product(
    id="cof-0013", title="Assam Breakfast Tea, Loose Leaf, 250 g", price=14.0, currency="USD",
    category="Coffee & Tea", description="A strong, malty TGFOP Assam that stands up to milk.",
)  # fmt: skip
COOKER = Product(
    id="kit-zh-01", title="智能电饭煲 1.8升", price=89.0, currency="USD", category="Kitchen",
    description="这款电饭煲容量为1.8升，适合2-6人的家庭日常使用。700瓦加热盘配合不粘内胆。",
)  # fmt: skip


def test_the_served_bad_answers_are_caught() -> None:
    """Fixtures from the issue and from the small model's answers."""
    labels = Labels([TEA, COOKER])
    bad = [
        "[1] is a tea made with a glass tea pot, a glass tea cup, and a glass tea bag.",
        "[1] is a luxurious, high-end tea, the finest Assam.",
        "[1] comes in a 500 g tin and is perfect for women with sensitive skin.",
        "[2] 智能电饭煲，容量5升，红色外观，适合孕妇使用。",
        # served by the small model (eval/results/2026-11-30-latency.md)
        "[1] is rich in antioxidants and can help reduce inflammation.",
    ]
    for text in bad:
        r = check_details(text, labels, "a gift for a tea lover", CLAIMS)
        assert r.answer == "" and r.flags[0]["kind"] == "invented_detail", (text, r)
        assert r.flags[0]["found"], text


def test_grounded_sentences_stay() -> None:
    labels = Labels([TEA, COOKER])
    good = [
        "[1] Assam Breakfast Tea, 250 g, 14.00 USD: a strong, malty tea that stands up to milk.",
        "The best match for a tea lover is [1], a malty loose leaf Assam.",
        "[2] 智能电饭煲 1.8升，89.00 USD，适合2-6人的家庭日常使用。",
    ]
    for text in good:
        r = check_details(text, labels, "a gift for a tea lover", CLAIMS)
        assert r.answer == text and not r.flags, (text, r.flags)


def test_an_invented_sentence_is_removed_and_the_rest_served(rs: Recsmith) -> None:
    llm = ScriptedLLM(rs.settings, "[1] is a cast iron skillet. It comes in purple and pink.")  # type: ignore[arg-type]
    tokens, final = run_turn(Assistant(rs, llm).stream("cast iron skillet"))
    assert final["answer"] == "[1] is a cast iron skillet."
    assert final["removed"] == ["It comes in purple and pink."]
    assert [f["kind"] for f in final["flags"]] == ["invented_detail"]
    assert final["template"] == "assistant_turn"


def test_nothing_grounded_left_serves_the_answer_built_from_the_data(rs: Recsmith) -> None:
    text = "[1] is a luxurious 5 L skillet in red, perfect for women."
    llm = ScriptedLLM(rs.settings, text)  # type: ignore[arg-type]
    tokens, final = run_turn(Assistant(rs, llm).stream("cast iron skillet"))
    assert final["template"] == "assistant_fallback"
    assert final["answer"].startswith('These products match "cast iron skillet"')
    assert "luxurious" not in final["answer"] and "perfect for women" not in final["answer"]
    top = final["products"][0]
    assert top["title"] in final["answer"] and f"{top['price']:.2f}" in final["answer"]
    assert "invented_detail" in [f["kind"] for f in final["flags"]]
    assert final["degraded"] and final["degraded_reason"].startswith("empty:")


def test_a_line_break_separates_two_products_facts() -> None:
    """Seen with the small model: product [1]'s copied description, then [2]'s line with no
    full stop between them; [1]'s "20 bar" must be judged against [1]'s data."""
    espresso = Product(
        id="cof-0003", title="Compact Espresso Maker, 20 bar", price=149.0, currency="USD",
        description="A 20 bar pump in a 15 cm wide body.",
    )  # fmt: skip
    duetto = Product(id="cof-0001", title="Duetto Espresso Machine", price=299.0, currency="USD")
    text = (
        "[1] Compact Espresso Maker, 149.00 USD. It has a 20 bar pump\n"
        "[2] Duetto Espresso Machine, 299.00 USD."
    )
    r = check_details(text, Labels([espresso, duetto]), "推荐一款咖啡机", CLAIMS)
    assert r.answer == text and not r.flags, r.flags


def test_what_is_left_after_a_wrong_priced_line_is_not_served_alone(rs: Recsmith) -> None:
    """Served by the small model for "a cheaper one?": the line naming the product had the
    wrong price and was removed, and "It's a cheap one because it uses stainless steel
    infusers …" stayed, citing nothing. Without its product line the rest is not served."""
    text = "[1] Pre-Seasoned Cast Iron Skillet, 99.00 USD. It is a cheap one because it lasts."
    llm = ScriptedLLM(rs.settings, text)  # type: ignore[arg-type]
    tokens, final = run_turn(Assistant(rs, llm).stream("cast iron skillet"))
    assert final["template"] == "assistant_fallback", final["answer"]
    assert "cheap one" not in final["answer"]
    assert "ungrounded_price" in [f["kind"] for f in final["flags"]]
    assert final["degraded"] and final["degraded_reason"].startswith("empty:")
