"""Grounding without a model: labels, foreign ids, stream cleaning, price checks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.assistant.grounding import AnswerGuard, Labels, StreamSanitizer, check_prices
from service.assistant.lc import turn_messages
from service.catalog.models import Product

P = [
    Product(id="kit-0001", title="Cast Iron Skillet, 26 cm", price=39.95, category="Kitchen",
            description="Weighs 3.1 kg, oven-safe to 260 C."),
    Product(id="kit-0002", title="Cast Iron Skillet, 30 cm", price=54.0, category="Kitchen"),
]  # fmt: skip
L = Labels(P)


def test_labels_outside_the_list_and_foreign_ids_are_dropped() -> None:
    text = "Buy [1] or [7], or FAKE-9999 and kit-0042, not [1, 9]; kit-0002 is big."
    out = L.sanitize(text)
    assert out == "Buy [1] or, or and, not [1]; [2] is big."
    assert L.cited(out) == ["kit-0001", "kit-0002"]
    assert "FAKE" not in out and "kit-0042" not in out


def test_fence_markers_are_removed() -> None:
    assert L.sanitize("[1] <<<Cast Iron Skillet>>> is good.") == "[1] Cast Iron Skillet is good."
    # Half a fence after a cut description's ellipsis, as the small model served it.
    got = L.sanitize("It has a 20 bar …>>\n[2] Duetto. 这款台灯……>>\n")
    assert got == "It has a 20 bar \n[2] Duetto. 这款台灯\n"


def test_harmless_hyphenated_words_stay() -> None:
    text = "A non-stick, USB-C, 2-in-1 pan [2]."
    assert L.sanitize(text) == text


def _feed_all(pieces: list[str]) -> tuple[str, list[str]]:
    s = StreamSanitizer(L)
    out = [s.feed(p) for p in pieces] + [s.flush()]
    return s.text, [o for o in out if o]


def test_a_label_split_across_pieces_is_judged_whole() -> None:
    text, out = _feed_all(["Try [", "1", "] and [", "8] and FAKE", "-99", "99 too."])
    assert text == "Try [1] and and too."
    assert all("8" not in o and "FAKE" not in o for o in out)


def test_chinese_text_streams_without_spaces() -> None:
    s = StreamSanitizer(L)
    got = [s.feed(ch) for ch in "推荐这个铸铁锅[1]，很好用。"]
    assert "".join(got)  # released before the end, not held until flush
    assert (("".join(got)) + s.flush()) == "推荐这个铸铁锅[1]，很好用。"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["[1]", "[9]", "[1, 2]", " ", "  ", "kit-0001", "FAKE-99", "pan", ".",
                         "[", "]", "锅", "好", "\n", "$39.95", "2-in-1",
                         "<<<", ">>>", "<", "‹‹‹", ">>", "…", ">"]),
        max_size=30,
    ),
    st.data(),
)  # fmt: skip
def test_streaming_equals_cleaning_the_whole_text(parts: list[str], data: st.DataObject) -> None:
    text = "".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert _feed_all(pieces)[0] == L.sanitize(text)


def test_a_sentence_with_a_wrong_price_is_removed() -> None:
    c = check_prices("The [1] costs $39.95. The [2] costs $12.99. Both are cast iron.", L)
    assert c.answer == "The [1] costs $39.95. Both are cast iron."
    assert c.removed == ["The [2] costs $12.99."]
    assert c.flags[0]["kind"] == "ungrounded_price"


def test_prices_are_checked_against_the_sentences_own_citations() -> None:
    c = check_prices("[2] is 39.95 USD.", L)  # that is [1]'s price
    assert c.answer == "" and c.removed


def test_other_numbers_are_flagged_not_removed() -> None:
    c = check_prices("The [1] weighs 3.1 kg and serves 12 people.", L)
    assert c.answer == "The [1] weighs 3.1 kg and serves 12 people."
    assert [f["text"] for f in c.flags if f["kind"] == "ungrounded_number"] == ["12"]


def test_a_sentence_cut_off_by_the_token_limit_is_dropped() -> None:
    c = check_prices("The [1] is a classic. It has a long handle and", L)
    assert c.answer == "The [1] is a classic."
    assert c.removed == ["It has a long handle and"]
    assert check_prices("I recommend [1]", L).answer == "I recommend [1]"  # nothing before it


def test_a_sentence_said_again_is_dropped() -> None:
    """Issue 10: "The product is [1] and the label is [1]" six times."""
    guard = AnswerGuard([])
    loop = "The product is [1] and the label is [1]. " * 6
    shown = guard.feed(loop) + guard.flush()
    assert shown.count("The product is") == 1
    assert [f["kind"] for f in guard.flags] == ["repetition"] * 5
    fresh = AnswerGuard([])
    two = "[1] is a tea set for 68.00 USD. [2] is a green tea for 42.00 USD. "
    assert (fresh.feed(two) + fresh.flush()).strip() == two.strip()


def test_the_turn_prompt_is_compact_and_asks_for_the_shoppers_language() -> None:
    long = Product(id="x1", title="Tea Set", description="word " * 400, price=68.0)
    msgs = turn_messages({"question": "a gift for a tea lover", "products": [long]})
    assert "Answer in English" in msgs[1].content and len(msgs[1].content) < 600
    zh = turn_messages({"question": "推荐一款咖啡机", "products": [long]})
    assert "请用中文回答" in zh[1].content
