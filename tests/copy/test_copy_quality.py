"""Issue 10: the bad texts users were served, each caught by a check; realistic good texts
pass every check; a retry restates the task and never serves an instruction; a headline's
language follows the shopper, not the first product. No model: texts are fixtures and the
writer runs against a scripted LLM, with the real templates, checks and SQLite store."""

from __future__ import annotations

import json

import pytest

from service.catalog.models import Product
from service.catalog.store import CatalogStore
from service.config import Settings
from service.copy.checks import Facts, Limits, check_theme, echo_grams, fit_sentences, run_checks
from service.copy.tasks import CopyRequest, HeadlineRequest, token_budget
from service.copy.writer import CopyWriter
from tests.fakes import FakeLLM

CLAIMS = Settings().unsupported_claims

MUG = Product(
    id="q-mug",
    title="Ceramic Coffee Mug 350ml",
    description="A glazed ceramic mug that holds 350 ml. Dishwasher and microwave safe.",
    category="Kitchen",
    brand="Hearthwell",
    price=12.0,
    attributes={"capacity_ml": 350, "colour": "white"},
)
BOARD = Product(
    id="q-board",
    title="Bamboo Cutting Board",
    description="A bamboo board for chopping vegetables and slicing bread. 40 x 25 cm.",
    category="Kitchen",
    brand="Hearthwell",
    price=24.0,
)
JACKET = Product(
    id="q-jacket",
    title="Stormcrest 3-Layer Waterproof Hiking Jacket",
    description="A 3-layer shell with pit zips, taped seams and a 20,000 mm waterproof rating.",
    category="Outdoor",
    brand="Stormcrest",
    price=199.0,
)
SERUM = Product(
    id="q-serum",
    title="Rosehip Face Oil, 30 ml",
    description="Cold-pressed rosehip seed oil in a 30 ml dropper bottle.",
    category="Beauty",
    brand="Petalry",
    price=18.0,
)
PRESS = Product(
    id="q-press",
    title="Glass French Press, 1 L",
    description="A borosilicate glass carafe with a steel mesh filter; brews 1 L of coffee.",
    category="Coffee & Tea",
    brand="Brewhaus",
    price=29.0,
)


def failed(text: str, product: Product, language: str = "en", prompt: str = "") -> set[str]:
    facts = Facts.from_products([product])
    grams = echo_grams([prompt], facts) if prompt else None
    limits = Limits(max_words=60, max_chars=120)
    results = run_checks(
        text, facts, language=language, limits=limits, banned=[], claims=CLAIMS,
        prompt_grams=grams,
    )  # fmt: skip
    return {r.name for r in results if not r.ok}


# -- every bad text quoted in the issue is caught ------------------------------------------
BLURB_PROMPT = (
    "Task: write a short marketing text for this product in plain sentences, at most 38 "
    "words. Tone: <<<playful>>>."
)


@pytest.mark.parametrize(
    ("text", "product", "check"),
    [
        # The product title four times.
        (
            "Glass French Press, 1 L! Glass French Press, 1 L brews coffee. Glass French "
            "Press, 1 L. Glass French Press, 1 L.",
            PRESS,
            "repetition",
        ),
        # Praise the data does not support, and a loop.
        (
            "Ceramic Coffee Mug 350ml is a high-end, high-end ceramic mug made with the finest, "
            "most luxurious, and most luxurious materials",
            MUG,
            "claims",
        ),
        (
            "Ceramic Coffee Mug 350ml is a high-end, high-end ceramic mug made with the finest, "
            "most luxurious, and most luxurious materials",
            MUG,
            "repetition",
        ),
        # The wrong kind of product.
        ("Bamboo Cutting Board is a kitchen appliance", BOARD, "topic"),
        # The retry instruction served as the text.
        (
            "Your last answer was rejected. Fix these problems: - It was too long. Use at most "
            "50 words.",
            BOARD,
            "echo",
        ),
        # The prompt echoed.
        ("<<<friendly>>> marketing text for this product in plain sentences.", BOARD, "echo"),
        # Invented attributes (the 1.5B and the 0.5B model).
        (
            "The Stormcrest jacket keeps rain out with its 20,000 mm rating. Available in sizes "
            "M to XL.",
            JACKET,
            "attributes",
        ),
        ("Rosehip Face Oil, perfect for women with sensitive skin.", SERUM, "attributes"),
        # Chat: a sentence said twice, invented materials.
        (
            "A French press made with a glass tea pot, a glass tea cup, and a glass tea bag. "
            "A French press made with a glass tea pot, a glass tea cup, and a glass tea bag.",
            PRESS,
            "repetition",
        ),
        (
            "The product is [1] and the label is [1]. The product is [1] and the label is [1]. "
            "The product is [1] and the label is [1].",
            PRESS,
            "repetition",
        ),
        # A text that never says what the product is.
        ("Make every morning better with this one.", MUG, "topic"),
        ("Hearthwell makes mornings brighter, 350 ml at a time.", MUG, "topic"),
    ],
)
def test_each_bad_text_from_the_issue_is_caught(text: str, product: Product, check: str) -> None:
    assert check in failed(text, product, prompt=BLURB_PROMPT), text


def test_a_headline_that_is_the_templates_opening_words_is_caught() -> None:
    """u-alice's headline was "这位顾客最近看过：" — Chinese for an English shopper, and
    the items template's own words."""
    facts = Facts.from_fields(["Burr Coffee Grinder", "Pour-Over Kettle"])
    results = run_checks(
        "这位顾客最近看过：", facts, language="en", limits=Limits(max_words=8), banned=[],
        topic=False,
    )  # fmt: skip
    bad = {r.name for r in results if not r.ok}
    assert {"language", "echo"} <= bad


def test_health_and_quality_claims_need_the_data() -> None:
    # Served texts (eval/results/2026-11-30-latency.md): a tea "rich in antioxidants" that
    # "can help reduce inflammation", a Longjing of "品质卓越" (excellent quality).
    assert "claims" in failed("A ceramic mug, rich in antioxidants, holds 350 ml.", MUG)
    assert "claims" in failed("A ceramic mug that holds 350 ml to reduce inflammation.", MUG)
    assert "claims" in failed("这款陶瓷马克杯品质卓越，容量350毫升。", MUG, language="zh")


def test_praise_is_allowed_where_the_data_says_it() -> None:
    luxe = MUG.model_copy(update={"description": MUG.description + " A luxurious glaze."})
    assert "claims" in failed("A luxurious ceramic mug that holds 350 ml.", MUG)
    assert "claims" not in failed("A luxurious ceramic mug that holds 350 ml.", luxe)


def test_attributes_in_the_data_are_allowed() -> None:
    assert "attributes" not in failed("A white ceramic mug that holds 350 ml.", MUG)
    assert "attributes" in failed("A blue ceramic mug that holds 350 ml.", MUG)
    assert "attributes" in failed("A ceramic mug with a bamboo lid.", MUG)
    sized = JACKET.model_copy(update={"attributes": {"sizes": "S, M, L, XL"}})
    assert "attributes" not in failed("A waterproof hiking jacket in sizes M to XL.", sized)
    assert "attributes" in failed("这款杯子适合孕妇使用，红色杯身。", MUG, language="zh")


GOOD = [
    (
        "The Ceramic Coffee Mug holds 350 ml and goes in the dishwasher and the microwave.",
        MUG,
        "en",
    ),
    (
        "A bamboo cutting board, 40 x 25 cm, for chopping vegetables and slicing bread.",
        BOARD,
        "en",
    ),
    (
        "Stay dry on the trail: the Stormcrest 3-layer hiking jacket has pit zips, taped seams "
        "and a 20,000 mm waterproof rating.",
        JACKET,
        "en",
    ),
    (
        "Brew 1 L of coffee at once in this glass French press from Brewhaus; the steel mesh "
        "filter keeps the grounds out of your cup.",
        PRESS,
        "en",
    ),
    ("Petalry rosehip face oil: cold-pressed, in a 30 ml dropper bottle.", SERUM, "en"),
]


@pytest.mark.parametrize(("text", "product", "language"), GOOD)
def test_realistic_good_texts_pass_every_check(text: str, product: Product, language: str) -> None:
    assert failed(text, product, language, prompt=BLURB_PROMPT) == set(), text


def test_good_chinese_text_passes() -> None:
    rice = Product(
        id="q-rice",
        title="智能电饭煲 1.8升",
        description="这款电饭煲容量为1.8升，700瓦加热盘，内置8种烹饪程序。",
        category="Kitchen",
        brand="Hearthwell",
        price=89.0,
        language="zh",
    )
    text = "智能电饭煲容量1.8升，700瓦加热盘，内置8种烹饪程序，煮饭煮粥都方便。"
    assert failed(text, rice, "zh") == set()


def test_token_budget_follows_the_length_limit() -> None:
    assert token_budget(25, None) < token_budget(80, None)
    assert token_budget(None, 30) < token_budget(None, 160)
    assert token_budget(50, None) >= 50 * 1.3  # room for an English word's tokens


# -- the writer against a scripted model ----------------------------------------------------
@pytest.fixture
def quiet_catalog(settings: Settings, catalog: CatalogStore) -> CatalogStore:
    return catalog


def _writer(settings: Settings, catalog: CatalogStore, llm: FakeLLM, **upd) -> CopyWriter:  # noqa: ANN003
    s = settings.model_copy(update={"copy_max_retries": 2, **upd})
    return CopyWriter(s, llm=llm, catalog=catalog)  # type: ignore[arg-type]


def test_a_retry_restates_the_task_and_never_quotes_the_failure(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    bad = "The Santoku Knife, 17 cm has a 99-year warranty and comes in a luxurious gift box."
    llm = FakeLLM(replies=(bad, bad, bad))
    w = _writer(settings, quiet_catalog, llm)
    [r] = w.generate(CopyRequest(task="summary", product_id="kit-0007", regenerate=True))
    assert r.attempts == 3 and not r.passed
    first, retry = llm.prompts[0], llm.prompts[1]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[:3] == first[:3]  # the fixed prefix (rules, worked example) is unchanged
    task = retry[-1]["content"]
    assert "Santoku Knife" in task and "summary" in task  # the task, restated
    for piece in ("99", "warranty", "luxurious", "gift box", "rejected"):
        assert piece not in task, piece  # nothing of the failed text, no "you failed"
    assert "Be strict" in task
    # Every call had repetition control and a budget from the length limit.
    assert all(p.repetition_penalty > 1.0 for p in llm.params)
    assert llm.params[0].max_tokens == token_budget(40, None)  # the summary default: 40 words
    # Greedy throughout: sampled retries served texts a reader rejects (see _produce).
    assert [p.temperature for p in llm.params] == [0.0, 0.0, 0.0]


def test_a_retry_never_serves_an_instruction(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    """A model that answers the retry with the retry's own words (or the prompt's) is
    refused, even with copy_on_fail=flag: the text is never served."""
    llm = FakeLLM(
        replies=(
            "The Santoku Knife, 17 cm has a 99-year warranty.",  # invented number → retry
            lambda p: p[-1]["content"],  # echoes the retry prompt
            lambda p: "Your last answer was rejected. Fix these problems: it was too long.",
        )
    )
    w = _writer(settings, quiet_catalog, llm, copy_on_fail="flag")
    [r] = w.generate(CopyRequest(task="summary", product_id="kit-0007", regenerate=True))
    assert "echo" in r.failed_checks
    assert r.refused and r.text is None and r.status == "rejected"
    stored = w.store.get(r.id)
    assert json.loads(stored.prompt)[-1]["role"] == "user"


def test_an_echo_of_the_worked_example_is_caught(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    example = (
        "The Fernhollow Enamel Camping Mug is a 400 ml enamelled steel mug for camp coffee "
        "that can sit on a camp stove."
    )
    llm = FakeLLM(replies=(example,))
    w = _writer(settings, quiet_catalog, llm, copy_max_retries=0)
    [r] = w.generate(CopyRequest(task="summary", product_id="kit-0007", regenerate=True))
    assert "echo" in r.failed_checks and r.text is None


def test_a_clean_text_passes_first_time(settings: Settings, quiet_catalog: CatalogStore) -> None:
    llm = FakeLLM(
        replies=(
            "A 17 cm santoku knife for push-cutting vegetables and boneless meat; the hollow "
            "dimples keep slices from sticking.",
        )
    )
    w = _writer(settings, quiet_catalog, llm)
    [r] = w.generate(CopyRequest(task="summary", product_id="kit-0007", regenerate=True))
    assert r.passed and r.attempts == 1, r.checks


def test_headline_language_follows_the_shopper_not_the_first_product(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    """u-alice shops in English; the first item of her set is Chinese."""
    llm = FakeLLM(replies=("Coffee Gear for Your Mornings",))
    w = _writer(settings, quiet_catalog, llm)
    req = HeadlineRequest(product_ids=["kit-zh-01", "cof-0001", "cof-0002"], user_id="u-alice")
    res = w.headline(req.model_copy(update={"regenerate": True}))
    assert res.headline.language == "en" and res.headline.template == "copy_headline.en"
    # Chinese interests (or an explicit request) give a Chinese headline.
    llm2 = FakeLLM(replies=("为你挑选的厨房好物",))
    w2 = _writer(settings, quiet_catalog, llm2)
    zh = w2.headline(
        HeadlineRequest(product_ids=["cof-0001", "kit-zh-01"], interests=["白瓷功夫茶具套装"])
    )
    assert zh.headline.language == "zh"
    explicit = w2.headline(
        HeadlineRequest(product_ids=["kit-zh-01"], user_id="u-alice", language="zh")
    )
    assert explicit.headline.language == "zh"


def test_an_overlong_text_is_cut_back_to_whole_sentences() -> None:
    text = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen."
    assert fit_sentences(text, "en", Limits(max_words=11)) == (
        "One two three four five. Six seven eight nine ten."
    )
    assert fit_sentences(text, "en", Limits(max_words=40)) == text  # fits already
    # A stub (under 40 % of the limit) is not served in place of the text.
    assert fit_sentences("One two. " + "word " * 30, "en", Limits(max_words=20)).startswith("One")
    assert len(fit_sentences("One two. " + "word " * 30, "en", Limits(max_words=20)).split()) > 20
    zh = "这是第一句。这是第二句。这是第三句。"
    assert fit_sentences(zh, "zh", Limits(max_chars=12)) == "这是第一句。这是第二句。"


def test_a_headline_that_is_a_product_title_is_caught_and_retried_as_a_theme(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    """The small model answered u-alice's headline with one of her items' titles."""
    titles = ["Damascus Chef's Knife, 20 cm", "Duetto Espresso Machine with Steam Wand"]
    assert not check_theme("Chef's Knife, 20 cm", titles).ok
    assert not check_theme("Duetto Espresso Machine", titles).ok
    assert not check_theme("茶具套装、绿茶", ["白瓷功夫茶具套装（一壶六杯）"]).ok
    for theme in ("Coffee and Kitchen Favourites", "Espresso Mornings, Sharp Knives"):
        assert check_theme(theme, titles).ok, theme
    assert check_theme("为你挑选的厨房好物", ["白瓷功夫茶具套装（一壶六杯）"]).ok

    llm = FakeLLM(replies=("Chef's Knife, 20 cm", "Coffee mornings in your kitchen"))
    w = _writer(settings, quiet_catalog, llm)
    req = HeadlineRequest(product_ids=["cof-0001", "kit-0006"], user_id="u-alice", regenerate=True)
    res = w.headline(req)
    assert res.headline.passed and res.headline.attempts == 2, res.headline.checks
    assert res.headline.text == "Coffee mornings in your kitchen"
    first, retry = llm.prompts[0][-1]["content"], llm.prompts[1][-1]["content"]
    assert "not the name of one product" in first
    assert (
        "Name a theme that the whole set shares" in retry
        and "Chef's Knife, 20 cm" not in (retry.split("Be strict")[1])
    )


def test_a_repeating_headline_is_caught_and_the_fallback_is_served(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    """u-alice's headline ended "Kitchen, Cooking, Cooking" after 3 attempts and was served
    flagged. The interests reach the prompt once each, the repetition check flags the loop,
    and when every attempt fails the templated headline is served: the shopper's latest
    interest and what the set shares, from data only (it passes every check itself)."""
    loop = "Kitchen, Cooking, Cooking"
    llm = FakeLLM(replies=(loop, loop, loop))
    w = _writer(settings, quiet_catalog, llm)
    req = HeadlineRequest(
        product_ids=["kit-0002", "kit-0003", "kit-0008"],
        interests=["Cooking", "Kitchen", "cooking", "Carbon Steel Frying Pan, 28 cm"],
        regenerate=True,
    )
    res = w.headline(req)
    prompt = llm.prompts[0][-1]["content"]
    listed = prompt.split("The shopper recently looked at:")[1]
    assert listed.count("Cooking") == 1 and listed.count("cooking") == 0
    assert "Frying Pan" not in listed  # an item's own title is not an interest as well
    assert "Their categories: <<<Kitchen>>>" in prompt or "Their categories: Kitchen" in prompt
    h = res.headline
    assert h.attempts == 3 and h.passed, h.checks
    assert h.text == "For your interest in Cooking: kitchen picks" and h.meta.get("fallback")
    assert h.meta["failed_attempts"][-1]["text"] == loop
    assert "repetition" in h.meta["failed_attempts"][-1]["failed"]


def test_a_headline_that_only_lists_the_sets_categories_is_no_theme(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    """The 0.5B writer answered the set [kit-0001, cof-0001, kit-0002] with "Cafe, Coffee &
    Tea, Cooking": the data block's category line, copied. It fails the theme check and is
    retried; a headline that says something beside a category is a theme."""
    cats = ["Cafe", "Coffee & Tea", "Cooking"]
    for label in ("Cafe, Coffee & Tea, Cooking", "Coffee & Tea and Cooking", "Cooking, Cafes"):
        result = check_theme(label, [], cats)
        assert not result.ok and "categories" in result.detail, label
    for theme in ("Slow Mornings: Coffee & Cooking", "More to explore: cafe and cooking", "Tea"):
        assert check_theme(theme, [], cats).ok, theme
    # Served for [kit-0001, cof-0001, kit-0002] (categories Kitchen, Coffee & Tea) by the
    # 0.5B writer after the first fix: a list of labels padded around one category.
    assert not check_theme("Cafe, Coffee & Tea, Cooking", [], ["Kitchen", "Coffee & Tea"]).ok
    assert not check_theme("Kitchen, Coffee, Breakfast", [], ["Kitchen", "Coffee & Tea"]).ok
    for theme in ("Brew, Sear, Savour", "Cook, Sip and Sleep Well at Camp"):
        assert check_theme(theme, [], ["Kitchen", "Coffee & Tea"]).ok, theme
    # Served for u-alice (review, 14:50): three of her items' and interests' names listed.
    alice = ["Damascus Chef's Knife, 20 cm", "Digital Kitchen Scale", "Glass French Press, 1 L"]
    listed = check_theme("Chef's Knife, Digital Scale, Glass Press", alice, ["Kitchen"])
    assert not listed.ok and "item names" in listed.detail
    assert check_theme("Sear, Slice and Weigh at Home", alice, ["Kitchen"]).ok
    # The Chinese fallback headline lists categories after its own words: a theme.
    assert check_theme("为你挑选：厨房、茶具、咖啡", [], ["厨房", "茶具", "咖啡"]).ok
    assert check_theme("More to explore: a, b, kitchen and tea", [], ["Kitchen", "Tea"]).ok
    assert not check_theme("厨房、茶具", [], ["Kitchen", "厨房", "茶具"]).ok
    assert check_theme("为你挑选：厨房、茶具", [], ["厨房", "茶具"]).ok
    assert check_theme("厨房里的慢时光", [], ["厨房", "茶具"]).ok

    llm = FakeLLM(replies=("Kitchen, Coffee", "Coffee mornings in your kitchen"))
    w = _writer(settings, quiet_catalog, llm)
    req = HeadlineRequest(product_ids=["cof-0001", "kit-0006"], regenerate=True)
    res = w.headline(req)
    first = res.headline.meta["failed_attempts"][0]
    assert first["text"] == "Kitchen, Coffee" and first["failed"] == ["theme"], res.headline
    assert res.headline.passed and res.headline.text == "Coffee mornings in your kitchen"
    assert "or a list of their categories" in llm.prompts[0][-1]["content"]


SKILLET = Product(
    id="kit-0002",
    title="Cast Iron Skillet with Helper Handle, 30 cm",
    description=(
        "30 cm across, with a second loop handle so you can lift all 3.9 kg of it with two "
        "hands. Big enough for a family-sized frittata. Pre-seasoned, induction-ready and "
        "oven-safe to 260 °C."
    ),
    category="Kitchen",
    brand="Hearthwell",
    price=54.0,
    attributes={"material": "cast iron", "oven_safe_c": 260},
)
GROK = Product(
    id="ce-grok",
    title="Grok",
    description="xAI's assistant with real-time data from X and fewer refusals.",
    category="AI Assistants",
    brand="Grok",
    price=8.0,
)
ONEINCH = Product(
    id="ce-1inch",
    title="1inch",
    description="A DEX aggregator that splits one order across many exchanges.",
    category="DeFi",
    brand="1inch",
    price=0.0,
)
QUICKBOOKS = Product(
    id="ce-quickbooks",
    title="QuickBooks Online",
    description="Cloud accounting for small businesses: invoices, payroll and bank feeds.",
    category="Accounting",
    brand="QuickBooks Online",
    price=35.0,
)


def test_invented_safety_claims_are_caught() -> None:
    """The default writer's kit-0002 summary passed with "safe for families": the data says
    "family-sized" and "oven-safe", not that the pan is safe for families."""
    served = (
        "The Cast Iron Skillet with Helper Handle is a 30 cm cast iron skillet with a second "
        "loop handle. It's safe for families and has a pre-seasoned oven-safe temperature range."
    )
    assert "attributes" in failed(served, SKILLET)
    for text in (
        "A 30 cm cast iron skillet, non-toxic and dishwasher-safe.",
        "A 30 cm cast iron skillet that is completely safe for kids.",
        "这口铸铁锅安全无毒，食品级材质。",
    ):
        assert "attributes" in failed(text, SKILLET, "zh" if "锅" in text else "en"), text
    # Said by the data: allowed.
    assert "attributes" not in failed("An oven-safe 30 cm cast iron skillet.", SKILLET)
    assert "attributes" not in failed(
        "The Ceramic Coffee Mug holds 350 ml and is microwave-safe.", MUG
    )


def test_empty_puffery_is_an_unsupported_claim() -> None:
    """The Grok blurb passed every check: "AI assistants are like superheroes! … It's like
    having a superpower"."""
    served = (
        "AI assistants are like superheroes! With Grok, you can use your AI skills to help "
        "people solve problems. It's like having a superpower."
    )
    assert "claims" in failed(served, GROK)
    assert "claims" in failed("Grok is a game-changer for real-time answers.", GROK)
    assert "claims" not in failed("Grok is an AI assistant with real-time data from X.", GROK)


def test_the_topic_check_compares_names_by_letters_and_digits() -> None:
    """False positives of the 2026-11-30 run: "The 1-inch built its reputation …" names
    the product "1inch"; "a cloud-based accounting software" says what QuickBooks is."""
    one = "The 1-inch aggregator splits one order across many exchanges for a better rate."
    assert "topic" not in failed(one, ONEINCH)
    qb = "QuickBooks Online is a cloud-based accounting software for small businesses."
    assert "topic" not in failed(qb, QUICKBOOKS)
    # Still caught: a text about something else, and the wrong kind of product.
    assert "topic" in failed("Trade smarter across every exchange.", ONEINCH)
    assert "topic" in failed("Bamboo Cutting Board is a kitchen appliance", BOARD)


def test_a_text_that_still_loops_after_the_retries_is_never_served(
    settings: Settings, quiet_catalog: CatalogStore
) -> None:
    """A loop is not copy: after the retries it is stored as rejected, not served flagged."""
    loop = "The santoku knife, 17 cm, is a santoku knife, santoku knife, santoku knife."
    w = _writer(settings, quiet_catalog, FakeLLM(replies=(loop, loop, loop)))
    [r] = w.generate(CopyRequest(task="summary", product_id="kit-0007", regenerate=True))
    assert r.attempts == 3 and "repetition" in r.failed_checks
    assert r.text is None and r.status == "rejected" and r.generated_text == loop


def test_a_list_of_compounds_is_not_a_loop_and_a_possessive_names_the_product() -> None:
    """False positives of the 2026-11-30 runs: "Assistants API, Batch API" (a feature list
    sharing a head noun) counted as a loop; "Grok's features" did not name Grok."""
    listed = "The OpenAI API offers GPT-4o, the Assistants API, the Batch API and Vision models."
    api = Product(
        id="ce-openai-api", title="OpenAI API", brand="OpenAI", category="AI Tools",
        description="GPT-4o, the Assistants API, the Batch API and Vision models.", price=0.0,
    )  # fmt: skip
    assert "repetition" not in failed(listed, api)
    for loop in ("Kitchen, Cooking, Kitchen", "Kitchen, Cooking, Cooking"):
        assert "repetition" in failed(loop, MUG), loop
    assert "topic" not in failed("Get ready to use Grok's real-time answers from X.", GROK)


def test_long_data_is_cut_at_a_word_boundary_in_the_prompt() -> None:
    """The model copied a feature list cut in half ("… receipt capture, and 1099 C…")."""
    from service.prompts import library

    features = ", ".join(f"Feature number {i} with Contractor Forms" for i in range(12))
    p = QUICKBOOKS.model_copy(
        update={"attributes": {"features": features}, "description": "Word " * 150}
    )
    text = library().render("copy_product.en", product=p, description_chars=120).text
    line = next(ln for ln in text.splitlines() if ln.startswith("<<<features>>>"))
    shown = line.split(": ", 1)[1].strip("<>")
    assert "…" not in shown and features.startswith(shown) and features[len(shown)] in " ,"
    desc = next(ln for ln in text.splitlines() if ln.startswith("Description:"))
    assert "…" not in desc and desc.endswith("Word>>>")


def test_long_data_is_cut_after_a_whole_sentence_or_list_item() -> None:
    """The 0.5B writer copied QuickBooks' features cut as "…, Receipt Capture," and ran on
    into the fence ("receipt capture, and>>"), and Insightly's cut mid-item ("Role-based>>").
    The data block now ends a long value after its last whole sentence or item."""
    from service.prompts import clip

    features = "Invoicing, Expense Tracking, Payroll (add-on), Receipt Capture, 1099 Contractor"
    assert clip(features, 72) == "Invoicing, Expense Tracking, Payroll (add-on), Receipt Capture"
    desc = "Insightly bridges CRM and projects. After a deal is won, convert it into a project"
    assert clip(desc, 60) == "Insightly bridges CRM and projects."
    assert clip("plans: Free: 0; Plus: 29 user/mo; Pro: 49 user/mo", 40) == (
        "plans: Free: 0; Plus: 29 user/mo"
    )
    assert (
        clip("智能电饭煲容量为1.8升。适合2-6人的家庭日常使用，米饭受热均匀", 20)
        == "智能电饭煲容量为1.8升。"
    )
    assert clip("word " * 30, 23) == "word word word word"  # no sentence, no item: words
    assert clip("short enough", 40) == "short enough"


def test_a_sentence_that_says_an_earlier_one_again_is_left_out() -> None:
    """The 0.5B summary of the OpenAI API was refused after three tries: a good sentence,
    then the data's sentence copied with the same phrase. The repeat is left out; the
    text left passes the repetition check. A text that is mostly repeats stays as it is
    (and fails the check)."""
    from service.copy.checks import check_repetition, drop_repeated_sentences

    first = (
        "The OpenAI API is the foundation for AI-powered applications, offering "
        "state-of-the-art text generation, reasoning, and multimodal understanding."
    )
    again = (
        "GPT-4o provides state-of-the-art text generation, reasoning, and multimodal understanding."
    )
    assert not check_repetition(f"{first} {again}").ok
    kept = drop_repeated_sentences(f"{first} {again} It also offers a Batch API.")
    assert kept == f"{first} It also offers a Batch API." and check_repetition(kept).ok
    loop = "Buy the mug now. " + "Buy the mug now, it is a great mug for you. " * 4
    assert drop_repeated_sentences(loop) == loop  # too little would stay: not a repair
    zh = "白瓷功夫茶具套装含盖碗一只。白瓷功夫茶具套装含品茗杯六只。适合冲泡乌龙茶。"
    assert drop_repeated_sentences(zh) == "白瓷功夫茶具套装含盖碗一只。适合冲泡乌龙茶。"
    assert drop_repeated_sentences("One sentence only.") == "One sentence only."
