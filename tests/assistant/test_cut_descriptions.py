"""A chat turn shows each product's description cut short. Served at e6f9364: the model
copied the cut ("…arrives seasoned with", "…150毫升盖碗茶壶一只") and the answer broke off
mid-clause. The prompt now lets the first sentence end whole, and a copied cut is removed."""

from __future__ import annotations

from service.assistant.chat import Assistant
from service.assistant.grounding import (
    Labels,
    check_prices,
    complete_from_data,
    drop_cut_copies,
)
from service.assistant.lc import DESCRIPTION_CHARS, description_shown, turn_messages
from service.catalog.models import Product
from service.recsmith import Recsmith
from tests.assistant.conftest import ScriptedLLM, run_turn

SKILLET = Product(
    id="kit-0001", title="Pre-Seasoned Cast Iron Skillet, 26 cm", price=39.95, currency="USD",
    category="Kitchen",
    description=(
        "Cast in a single piece, this 26 cm skillet has no rivets to trap grease and arrives "
        "seasoned with vegetable oil, ready for its first steak. At 3.1 kg it holds heat well "
        "enough for a proper sear."
    ),
)  # fmt: skip
PAN = Product(
    id="kit-0004", title="Ceramic Nonstick Frying Pan, 24 cm", price=45.0, currency="USD",
    category="Kitchen", in_stock=False, description="A light pan for eggs and fish.",
)  # fmt: skip
TEA_SET = Product(
    id="cof-zh-01", title="白瓷功夫茶具套装（一壶六杯）", price=68.0, currency="USD",
    category="Coffee & Tea",
    description=(
        "这套功夫茶具选用德化白瓷，釉面温润细腻，共8件：150毫升盖碗茶壶一只、40毫升品茗杯六只，"
        "另配竹制茶盘一个。适合冲泡乌龙茶、普洱和白茶，送礼自用两相宜。"
    ),
)  # fmt: skip
# A first sentence too long to stretch to: still cut at a word.
LONG = Product(
    id="kit-0099", title="Enamelled Dutch Oven, 5.2 L", price=120.0, currency="USD",
    category="Kitchen",
    description=(
        "Made from heavy cast iron with a glossy enamel inside and out, this round pot braises, "
        "bakes bread and simmers stock for hours on any hob including induction and then goes "
        "straight into the oven without a second thought about the handles."
    ),
)  # fmt: skip


def test_the_first_sentence_is_shown_whole_when_it_is_a_little_over_the_budget() -> None:
    assert description_shown(SKILLET).endswith("ready for its first steak.")
    assert description_shown(TEA_SET).endswith("另配竹制茶盘一个。")
    cut = description_shown(LONG)
    assert len(cut) <= DESCRIPTION_CHARS and not cut.endswith(".")
    prompt = turn_messages({"question": "a pan", "products": [SKILLET, LONG]})[1].content
    assert "ready for its first steak.>>>" in prompt and f"{cut}>>>" in prompt


def test_a_copied_cut_description_is_removed_and_the_rest_kept() -> None:
    labels = Labels([SKILLET, PAN])
    shown = ["Cast in a single piece, this 26 cm skillet has no rivets to trap grease and"
             " arrives seasoned with"]  # fmt: skip
    served = (
        "[1] Pre-Seasoned Cast Iron Skillet, 26 cm, 39.95 USD. Cast in a single piece, this "
        "26 cm skillet has no rivets to trap grease and arrives seasoned with\n"
        "[2] Ceramic Nonstick Frying Pan, 24 cm, 45.00 USD, out of stock."
    )
    r = drop_cut_copies(served, labels, shown)
    assert r.answer == (
        "[1] Pre-Seasoned Cast Iron Skillet, 26 cm, 39.95 USD.\n"
        "[2] Ceramic Nonstick Frying Pan, 24 cm, 45.00 USD, out of stock."
    )
    assert [f["kind"] for f in r.flags] == ["cut_copy"]
    assert r.removed[0].endswith("arrives seasoned with")
    zh = Labels([TEA_SET])
    zh_shown = ["这套功夫茶具选用德化白瓷，釉面温润细腻，共8件：150毫升盖碗茶壶一只"]
    line = "[1] 白瓷功夫茶具套装（一壶六杯）, 68.00 USD."
    answer = f"{line} 这套功夫茶具选用德化白瓷，釉面温润细腻，共8件：150毫升盖碗茶壶一只"
    assert drop_cut_copies(answer, zh, zh_shown).answer == line


def test_finished_sentences_and_label_lines_stay() -> None:
    labels = Labels([SKILLET, PAN])
    shown = ["Cast in a single piece, this 26 cm skillet has no rivets to trap grease and"
             " arrives seasoned with"]  # fmt: skip
    for text in (
        "[1] Pre-Seasoned Cast Iron Skillet, 26 cm, 39.95 USD. It arrives seasoned with oil.",
        "[1] Pre-Seasoned Cast Iron Skillet, 26 cm, 39.95 USD",
        "[1] arrives seasoned with",  # names its product: judged by the other checks
        "It is the pan that arrives seasoned with.",
    ):
        r = drop_cut_copies(text, labels, shown)
        assert r.answer == text and not r.flags, text
    assert drop_cut_copies("[1] x. y z", labels, []).answer == "[1] x. y z"


def test_a_turn_that_copies_the_cut_serves_the_sentence_finished_from_the_data(
    rs: Recsmith,
) -> None:
    """Through the whole turn, with a demo product whose first sentence is too long to show
    whole: the model copies the cut ("… with 50 Nm of") and the data's own words finish the
    sentence, so the reason the drill fits is served rather than dropped."""
    drill = rs.store.get_products(["too-0001"])["too-0001"]
    shown = description_shown(drill)
    assert shown.endswith("with 50 Nm of")
    line = f"[1] {drill.title}, {drill.price:.2f} {drill.currency}."
    llm = ScriptedLLM(rs.settings, f"{line} {shown}")  # type: ignore[arg-type]
    tokens, final = run_turn(Assistant(rs, llm, top_n=1).stream("cordless drill driver kit"))
    first = drill.description[: drill.description.index(". ") + 1]
    assert first.startswith(shown) and len(first) > len(shown)
    assert final["cited"] == ["too-0001"]
    assert final["answer"] == f"{line} {first}"
    assert [f["kind"] for f in final["flags"]] == ["completed_from_data"]
    assert not final["degraded"]


def test_a_cut_the_data_cannot_finish_is_still_dropped() -> None:
    """The data's sentence runs on too long to be a completion (the Dutch oven's single
    sentence): the broken-off clause is removed as before; so is a cut whose last words
    are not the data's."""
    labels = Labels([LONG])
    cut = description_shown(LONG)
    line = "[1] Enamelled Dutch Oven, 5.2 L, 120.00 USD."
    done = complete_from_data(f"{line} {cut}", labels)
    assert done.answer == f"{line} {cut}" and not done.flags
    assert drop_cut_copies(done.answer, labels, [cut]).answer == line
    own = complete_from_data(f"{line} It is a pot you will love for", labels)
    assert not own.flags


def test_a_copy_that_stops_mid_line_is_finished_and_a_stray_bracket_dropped() -> None:
    """The small model's answer to "有便宜点的吗？" after the knife (seen in bench_chat):
    a description copied whole but closed with "]", then the next product's line broken
    off at the token limit. Before, both were one unfinished "sentence" and both were
    dropped; now the first is kept and the second finished from the product's line."""
    boards = Product(
        id="kit-0010", title="Bamboo Cutting Boards, Set of 3", price=29.0, currency="USD",
        description="Three nesting boards for different jobs. Hand-wash only.",
    )  # fmt: skip
    labels = Labels([boards, SKILLET])
    served = (
        "[1] Bamboo Cutting Boards, Set of 3, 29.00 USD. Three nesting boards for different "
        "jobs.]\n\n[2] Pre-Seasoned Cast Iron Skillet, 26"
    )
    done = complete_from_data(served, labels)
    assert done.answer == (
        "[1] Bamboo Cutting Boards, Set of 3, 29.00 USD. Three nesting boards for different "
        "jobs.\n\n[2] Pre-Seasoned Cast Iron Skillet, 26 cm, 39.95 USD."
    )
    assert check_prices(done.answer, labels).answer == done.answer
    # Unfinished and not finishable: only the broken line goes, the one before it stays.
    kept = check_prices(served.replace("Skillet, 26", "pan that is"), labels)
    assert kept.answer.endswith("different jobs.]") and kept.removed == [
        "[2] Pre-Seasoned Cast Iron pan that is"
    ]
