"""Issue 10: a chat answer is in the shopper's language. "推荐一款适合露营的帐篷" was answered
in English; a Chinese product's title came back half-translated ("White瓷功夫茶具套装").
The language is checked like copy's (product titles, labels and prices aside); a wrong one
is retried once with the language restated (never quoting the answer), then the templated
answer in the shopper's language is served, built from the data."""

from __future__ import annotations

import re

from service.assistant.chat import Assistant
from service.assistant.grounding import Labels, answer_language_ok, check_details
from service.catalog.models import Product
from service.config import Settings
from service.copy.checks import cjk_ratio
from service.recsmith import Recsmith
from tests.assistant.conftest import run_turn
from tests.fakes import FakeLLM

CLAIMS = Settings().unsupported_claims
TENT = Product(
    id="out-0006", title="Trailhead 2-Person Backpacking Tent", price=189.0, currency="USD",
    category="Outdoor & Camping", description="A freestanding 3-season tent for two.",
)  # fmt: skip
TEASET = Product(
    id="cof-zh-01", title="白瓷功夫茶具套装（一壶六杯）", price=68.0, currency="USD",
    category="Coffee & Tea", description="这套功夫茶具选用德化白瓷，共8件。",
)  # fmt: skip
LAMP = Product(
    id="lig-zh-01", title="护眼LED台灯", price=39.0, currency="USD", category="Lighting",
    description="护眼LED台灯功率10瓦，无频闪LED光源，USB-C供电。",
)  # fmt: skip
ENGLISH = "[1] is a freestanding 3-season tent for two, 189.00 USD, good for camping."
CHINESE = "[1] Trailhead 2-Person Backpacking Tent，189.00 USD，是一顶双人三季帐篷，适合露营。"


def test_the_answers_language_is_judged_without_titles_and_prices() -> None:
    labels = Labels([TENT, TEASET])
    assert not answer_language_ok(ENGLISH, labels, "zh")
    assert answer_language_ok(CHINESE, labels, "zh")  # an English title inside is fine
    assert answer_language_ok("[1] Trailhead 2-Person Backpacking Tent, 189.00 USD.", labels, "zh")
    assert answer_language_ok(
        "[2] 白瓷功夫茶具套装（一壶六杯）, 68.00 USD: a tea set.", labels, "en"
    )
    assert not answer_language_ok(
        "[2] 白瓷功夫茶具套装（一壶六杯），68.00 USD，这是一套茶具。", labels, "en"
    )


def test_a_title_mangled_across_scripts_is_removed() -> None:
    """The small model's answer to "a gift for someone who loves tea"."""
    labels = Labels([TEASET, LAMP])
    served = (
        "[1] White瓷功夫茶具套装 (一壶六杯), 68.00 USD. "
        "This is a kit of white瓷功夫 tea tools, suitable for those who love tea."
    )
    r = check_details(served, labels, "a gift for someone who loves tea", CLAIMS)
    assert r.answer == "" and {f["kind"] for f in r.flags} == {"mixed_script"}
    assert "White瓷功夫茶具套装" in r.flags[0]["found"]
    # Latin and Chinese glued together where the data writes them so: kept.
    ok = "[2] 护眼LED台灯，39.00 USD，无频闪LED光源，USB-C供电。"
    assert check_details(ok, labels, "台灯", CLAIMS).answer == ok


def _first(prompt: object) -> tuple[str, str]:
    """([1]'s title, its price) as the turn prompt lists them."""
    text = prompt[-1]["content"]  # type: ignore[index]
    m = re.search(r"\[1\] <<<(.+?)>>>, (\d+\.\d\d) USD", text)
    assert m, text
    return m.group(1), m.group(2)


def english(prompt: object) -> str:
    title, price = _first(prompt)
    return f"[1] {title} costs {price} USD and is a good pick for this trip."


def chinese(prompt: object) -> str:
    title, price = _first(prompt)
    return f"[1] {title}，{price} USD，适合这次出行。"


def _assistant(rs: Recsmith, *replies: object) -> tuple[Assistant, FakeLLM]:
    llm = FakeLLM(rs.settings, replies=replies, piece=3)  # type: ignore[arg-type]
    return Assistant(rs, llm), llm  # type: ignore[arg-type]


def test_an_answer_in_the_wrong_language_is_retried_with_the_language_restated(
    rs: Recsmith,
) -> None:
    assistant, llm = _assistant(rs, english, chinese)
    _tokens, final = run_turn(assistant.stream("推荐一款适合露营的帐篷"))
    assert len(llm.prompts) == 2
    first, retry = llm.prompts[0][-1]["content"], llm.prompts[1][-1]["content"]
    assert "只用中文写句子" in retry and "只用中文写句子" not in first
    assert "good pick" not in retry  # the failed answer is never quoted back
    assert final["answer"] == llm.replies_given[1] and final["template"] == "assistant_turn"
    assert [f["kind"] for f in final["flags"]] == ["language"]


def test_still_the_wrong_language_serves_the_templated_answer_in_the_shoppers(
    rs: Recsmith,
) -> None:
    assistant, llm = _assistant(rs, english, english)
    _tokens, final = run_turn(assistant.stream("推荐一款适合露营的帐篷"))
    assert len(llm.prompts) == 2
    answer = final["answer"]
    assert final["template"] == "assistant_fallback" and final["degraded"]
    assert final["degraded_reason"].startswith("language:"), final["degraded_reason"]
    assert answer.startswith("这些商品符合“推荐一款适合露营的帐篷”")
    assert [f["kind"] for f in final["flags"]] == ["language", "language"]
    shown = rs.store.get_products([p["id"] for p in final["products"]])
    for p in shown.values():
        assert p.title in answer and f"{p.price:.2f}" in answer
    # Built from the data in Chinese: the category and why it fits, no English prose.
    first = shown[final["products"][0]["id"]]
    assert first.category == "Outdoor & Camping", answer
    assert f"{first.title}（户外露营），{first.price:.2f} USD，符合" in answer
    assert "“露营”" in answer  # camping gear, matched through the glossary
    assert "freestanding" not in answer and "good pick" not in answer
    rest = answer
    for p in shown.values():
        rest = rest.replace(p.title, "")
    assert cjk_ratio(rest) > 0.5, answer
