"""A product line whose title the small model mangled gets the data's title back rather
than being dropped (bench_chat, "a gift for a tea lover": "[1] White瓷功夫茶具套装 (一壶六杯) ,
68.00 USD." was removed whole, the answer kept only the tea; "a cheaper one?": "[1] Glass
Teapot with stainless Infuser, 1.2 L, 32.00 USD." under the tea's label was removed for the
wrong price)."""

from __future__ import annotations

from service.assistant.chat import Assistant
from service.assistant.grounding import Labels, check_details, check_prices, restore_titles
from service.catalog.models import Product
from service.config import Settings
from service.recsmith import Recsmith
from tests.assistant.conftest import ScriptedLLM, run_turn

CLAIMS = Settings().unsupported_claims
TEA = Product(
    id="cof-0013", title="Assam Breakfast Tea, Loose Leaf, 250 g", price=14.0, currency="USD",
    category="Coffee & Tea", description="A strong, malty TGFOP Assam that stands up to milk.",
)  # fmt: skip
TEASET = Product(
    id="cof-zh-01", title="白瓷功夫茶具套装（一壶六杯）", price=68.0, currency="USD",
    category="Coffee & Tea", description="这套功夫茶具选用德化白瓷，共8件。",
)  # fmt: skip
POT = Product(
    id="cof-0014", title="Glass Teapot with Stainless Infuser, 1.2 L", price=32.0,
    currency="USD", category="Coffee & Tea", description="Watch the leaves unfurl.",
)  # fmt: skip


def test_a_half_translated_title_is_restored_and_the_line_kept() -> None:
    labels = Labels([TEA, TEASET])
    served = (
        "[1] Assam Breakfast Tea, Loose Leaf, 250 g, 14.00 USD.\n"
        "[2] White瓷功夫茶具套装 (one壶 six杯) , 68.00 USD.\n"
        "This is a kit of white瓷功夫 tea tools."
    )
    r = restore_titles(served, labels)
    assert "[2] 白瓷功夫茶具套装（一壶六杯） , 68.00 USD." in r.answer
    assert r.flags == [{"kind": "title_restored", "text": "White瓷功夫茶具套装 (one壶 six杯)",
                        "to": "白瓷功夫茶具套装（一壶六杯）"}]  # fmt: skip
    # The title line now passes; the sentence that is not a title line is still removed.
    checked = check_details(r.answer, labels, "a gift for a tea lover", CLAIMS)
    assert "[2] 白瓷功夫茶具套装（一壶六杯）" in checked.answer
    assert checked.removed == ["This is a kit of white瓷功夫 tea tools."]


def test_a_mangled_title_that_is_not_the_cited_products_stays_mangled() -> None:
    """Chinese characters of another product, a wrong price, or too few characters to tell:
    nothing is restored (the checks then drop the line)."""
    labels = Labels([TEA, TEASET])
    for line in (
        "[1] White瓷功夫茶具套装, 14.00 USD.",  # [1] is the tea: not its title's characters
        "[2] White瓷功夫茶具套装, 99.00 USD.",  # not its price
        "[2] White瓷 set, 68.00 USD.",  # one character
        "[2] 白瓷功夫茶具套装（一壶六杯）, 68.00 USD.",  # already right
    ):
        r = restore_titles(line, labels)
        assert r.answer == line and not r.flags, line


def test_another_products_title_and_price_under_a_label_gets_its_label() -> None:
    labels = Labels([TEA, TEASET, POT])
    served = "[1] Glass Teapot with stainless Infuser, 1.2 L, 32.00 USD."
    r = restore_titles(served, labels)
    assert r.answer == "[3] Glass Teapot with stainless Infuser, 1.2 L, 32.00 USD."
    assert r.flags[0]["kind"] == "label_restored" and r.flags[0]["to"] == "cof-0014"
    assert check_prices(r.answer, labels).answer == r.answer  # the price is [3]'s
    # A price that is neither product's: unchanged, and check_prices removes it as before.
    wrong = "[1] Glass Teapot with stainless Infuser, 1.2 L, 35.00 USD."
    assert restore_titles(wrong, labels).answer == wrong
    assert check_prices(wrong, labels).answer == ""


def test_a_turn_serves_the_restored_title(rs: Recsmith) -> None:
    """Through a whole turn on the demo catalogue: the tea set's line, half translated by the
    model, is served with the data's title and cited."""
    found = rs.store.get_products(["cof-zh-01"])
    assert "cof-zh-01" in found
    title = found["cof-zh-01"].title
    llm = ScriptedLLM(rs.settings, "[1] White瓷功夫茶具套装 (one壶 six杯), 68.00 USD.")  # type: ignore[arg-type]
    _tokens, final = run_turn(Assistant(rs, llm, top_n=1).stream("白瓷功夫茶具套装"))
    assert final["cited"] == ["cof-zh-01"], final
    assert final["answer"] == f"[1] {title}, 68.00 USD."
    assert "title_restored" in [f["kind"] for f in final["flags"]]
