"""Conversation → retrieval query, by rules: deterministic, instant, no LLM call.

A 135M model cannot rewrite queries reliably, and a rewrite call would double the latency
of every turn, so a turn is classified with a few word lists:

- a *new topic* ("cast iron skillet for steak") is searched as typed;
- a *follow-up* ("cheaper ones?", "what about red?", "are they in stock?") keeps the previous
  turn's topic (its retrieval query) plus whatever new content words it brings, and the
  category of the products the shopper was just shown.

Price words become filters: "under $50" → max_price; "cheaper" in a follow-up → below the
cheapest product just shown; "pricier" → above the dearest; "in stock" → in_stock_only.
The same rules hold in Chinese ("有便宜点的吗？", "100元以下", "有货的"): Chinese has no
spaces, so its content is what is left after removing price talk and function phrases
(有…吗, 一点, 推荐, 一款 …), and a follow-up is a message with no content left or one that
opens with 那/还有/有没有/其他/别的.
Filters the caller passed always win over derived ones, and derived ones are relaxed in
order (price, then category) when they leave nothing to show.

A Chinese query also gets `cross`: the English words for its shop words ("咖啡机" →
"coffee machine espresso maker", service/assistant/glossary.py). The assistant searches
both and fuses them (`fuse_crosslingual`): the catalogue is mostly English, and the
multilingual encoder alone ranks any Chinese product above the right English one.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from service.assistant.glossary import translate_terms
from service.catalog.models import Product
from service.retrieval.filters import Filters


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _words(
    """a an the and or but of for to in on at by with from about as is are was were be been
    it its this that these those them they their there here i me my we our you your he she
    do does did can could would should will shall may might must have has had not no yes
    please show find give get want need looking look like some any anything something which
    what whats how who where when why one ones also too very really just more most less
    other others another else same similar instead only good best nice great recommend
    buy options option thing things ok okay thanks thank hi hello hey"""
)
# Words that say "continue the last topic" when a message starts with them.
LEADS = _words(
    """and also those these them they it its any which more less other others another same
    similar but or only ones one"""
)
LEAD_PHRASES = (
    "what about",
    "how about",
    "is it",
    "is there",
    "are they",
    "are there",
    "does it",
    "do they",
    "can it",
    "do you have",
)
CHEAPER = re.compile(
    r"\b(cheaper|cheapest|less expensive|lower[- ]priced|more affordable|budget|"
    r"inexpensive|cheap|on a budget)\b"
    r"|更?便宜(?:一?点|些)?|实惠(?:一?点|些)?|划算(?:一?点|些)?|低价|平价|价格低(?:一?点|些)?",
    re.I,
)
PRICIER = re.compile(
    r"\b(pricier|more expensive|higher[- ]end|premium|more upmarket|top of the range)\b"
    r"|更贵(?:一?点|些)?|贵(?:一?点|些)|高档(?:一?点|些)?|高端(?:一?点|些)?",
    re.I,
)
IN_STOCK = re.compile(r"\b(in stock|available now|available today|ships? now)\b|有货|现货", re.I)
_AMOUNT = r"[$€£¥]?\s?(\d+(?:[.,]\d+)?)\s?(?:usd|eur|gbp|dollars?|euros?|pounds?|bucks)?"
_ZH_AMOUNT = r"[$€£¥￥]?\s?(\d+(?:\.\d+)?)\s?(?:元|块钱?|美元|刀)?"
MAX_PRICE = re.compile(
    r"\b(?:under|below|less than|cheaper than|at most|up to|max(?:imum)?|no more than)\s*"
    + _AMOUNT
    + r"|(?:不超过|低于|少于|不到|最多)\s*"
    + _ZH_AMOUNT
    + r"|"
    + _ZH_AMOUNT
    + r"\s*(?:以下|以内|之内)",
    re.I,
)
MIN_PRICE = re.compile(
    r"\b(?:over|above|more than|at least|min(?:imum)?|from)\s*"
    + _AMOUNT
    + r"|(?:超过|高于|至少)\s*"
    + _ZH_AMOUNT
    + r"|"
    + _ZH_AMOUNT
    + r"\s*以上",
    re.I,
)
BETWEEN = re.compile(
    r"\bbetween\s*" + _AMOUNT + r"\s*(?:and|-|to)\s*" + _AMOUNT
    + r"|" + _ZH_AMOUNT + r"\s*(?:到|至|-|~)\s*" + _ZH_AMOUNT + r"\s*(?:之间)?",
    re.I,
)  # fmt: skip
# Spans removed from the text before counting content words or building a query.
_PRICE_SPANS = (BETWEEN, MAX_PRICE, MIN_PRICE, CHEAPER, PRICIER, IN_STOCK)
WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
# Chinese function phrases: what is left after removing them (and price talk) is content.
# Longest first, so "有没有" goes before "有".
ZH_FUNCTION = sorted(
    """有没有 还有没有 还有 那么 那个 这个 那些 这些 其他 别的 一点 一些 一下 一款 一个 一种
    推荐 请问 帮我 给我 我想要 我想 想要 我要 需要 可以 有的 的话 什么 哪个 哪款 怎么样
    请 有 吗 呢 吧 啊 的 了 那 这 个 款 种 些 点 再 换 也 还 和 或 要 买 我 你""".split(),  # noqa: SIM905
    key=len,
    reverse=True,
)
ZH_LEADS = ("那", "还有", "有没有", "其他", "别的", "换", "再", "这些", "那些", "它")


@dataclass
class PreviousTurn:
    """What the last assistant turn left behind."""

    topic: str  # the retrieval query it used
    products: list[Product] = field(default_factory=list)  # cited first, then the cards
    categories: list[str] = field(default_factory=list)  # the category filter it used


@dataclass
class TurnQuery:
    text: str  # what retrieval searches for
    follow_up: bool
    # Filters to try in order: strictest first, each later one relaxes a derived filter.
    attempts: list[Filters]
    derived: dict[str, Any] = field(default_factory=dict)  # what the rules added, for display
    cross: str = ""  # English search words for a Chinese query ("" when none is known)


def _amount(s: str) -> float:
    return float(s.replace(",", "."))


def _amounts(m: re.Match[str]) -> list[float]:
    """The amounts a price pattern matched (its English or Chinese alternative)."""
    return [_amount(g) for g in m.groups() if g is not None]


def _strip_price_talk(text: str) -> str:
    for rx in _PRICE_SPANS:
        text = rx.sub(" ", text)
    return text


def _zh_content(word: str) -> str:
    """A run of Chinese characters without its function phrases."""
    for f in ZH_FUNCTION:
        word = word.replace(f, " ")
    return " ".join(word.split())


def content_words(text: str) -> list[str]:
    out: list[str] = []
    for w in WORD.findall(_strip_price_talk(text)):
        if _CJK.search(w):
            out += _zh_content(w).split()
        elif w.lower() not in STOPWORDS and not w.isdigit():
            out.append(w)
    return out


def is_follow_up(message: str, has_previous: bool) -> bool:
    if not has_previous:
        return False
    low = " ".join(WORD.findall(message.lower()))
    if not content_words(message):
        return True  # "cheaper ones?", "any in stock?", "有便宜点的吗？"
    first = low.split(" ", 1)[0] if low else ""
    return first in LEADS or low.startswith(LEAD_PHRASES) or low.startswith(ZH_LEADS)


def _dominant_category(products: list[Product]) -> str | None:
    cats = [p.category for p in products if p.category]
    if not cats:
        return None
    counts = Counter(c.lower() for c in cats)
    top = max(counts.values())
    # Ties go to the earliest (cited products come first).
    return next(c for c in cats if counts[c.lower()] == top)


def build_query(
    message: str, previous: PreviousTurn | None, base: Filters | None = None
) -> TurnQuery:
    base = base or Filters()
    message = message.strip()
    follow = is_follow_up(message, previous is not None)
    derived: dict[str, Any] = {}
    new_words = content_words(message)
    if follow and previous is not None:
        text = " ".join([previous.topic, *new_words]).strip()
    elif _CJK.search(message):
        # Chinese: its content words only ("推荐一款咖啡机" → "咖啡机"): the function phrases
        # would match any Chinese product's text by their character pairs.
        text = " ".join(new_words) or message
    else:
        text = " ".join(_strip_price_talk(message).split()) or message
    text = text or message

    price: dict[str, float] = {}
    loose: dict[str, float] = {}
    if m := BETWEEN.search(message):
        lo, hi = sorted(_amounts(m)[:2])
        price = {"min_price": lo, "max_price": hi}
    else:
        if m := MAX_PRICE.search(message):
            price["max_price"] = _amounts(m)[0]
        if m := MIN_PRICE.search(message):
            price["min_price"] = _amounts(m)[0]
    seen = [p.price for p in (previous.products if previous else []) if p.price is not None]
    if not price and follow and seen:
        # Relative to what the shopper was just shown; the loose form is the fallback.
        if CHEAPER.search(message):
            price = {"max_price": round(min(seen) - 0.01, 2)}
            loose = {"max_price": round(max(seen) - 0.01, 2)}
        elif PRICIER.search(message):
            price = {"min_price": round(max(seen) + 0.01, 2)}
            loose = {"min_price": round(min(seen) + 0.01, 2)}
    # The caller's own price bounds win.
    price = {k: v for k, v in price.items() if getattr(base, k) is None}
    loose = {k: v for k, v in loose.items() if getattr(base, k) is None}
    if price.get("max_price", 0) < 0 or loose.get("max_price", 0) < 0:
        price, loose = {}, {}
    lo, hi = price.get("min_price", base.min_price), price.get("max_price", base.max_price)
    if lo is not None and hi is not None and lo > hi:
        price = {}
    if price:
        derived.update(price)

    in_stock = bool(IN_STOCK.search(message)) and not base.in_stock_only
    if in_stock:
        derived["in_stock_only"] = True

    categories: list[str] = []
    if follow and previous is not None and not base.categories:
        if previous.categories:
            categories = list(previous.categories)
        elif cat := _dominant_category(previous.products):
            categories = [cat]
    if categories:
        derived["categories"] = categories

    def filters(price_part: dict[str, float], cats: list[str]) -> Filters:
        upd: dict[str, Any] = dict(price_part)
        if cats:
            upd["categories"] = cats
        if in_stock:
            upd["in_stock_only"] = True
        return base.model_copy(update=upd)

    attempts = [filters(price, categories)]
    if loose:
        attempts.append(filters(loose, categories))
    if price:
        attempts.append(filters({}, categories))
    if categories:
        attempts.append(filters({}, []))
    cross = translate_terms(text) if _CJK.search(text) else ""
    return TurnQuery(text=text, follow_up=follow, attempts=attempts, derived=derived, cross=cross)


# Weight of the English (translated) list when the Chinese words matched no product's text
# lexically, and when they did (a Chinese product that names the thing outranks a
# translation's guess).
CROSS_WEIGHT_NO_MATCH = 1.5
CROSS_WEIGHT_MATCH = 0.5
_RRF_K = 10


def fuse_crosslingual(
    native: list[tuple[str, dict[str, float]]],
    cross: list[tuple[str, dict[str, float]]],
    matched: bool | None = None,
) -> list[str]:
    """Product ids of a Chinese query's own results and of its English translation's, fused
    by reciprocal rank: (id, per-source scores) lists, best first. A product in both lists
    rises; when no product of the Chinese list names the thing asked for (`matched`: one of
    the query's shop words is in its text; by default, any lexical match), the catalogue
    has no Chinese product of that kind and the translation's list leads."""
    if matched is None:
        matched = any("lexical" in sources for _pid, sources in native)
    w_cross = CROSS_WEIGHT_MATCH if matched else CROSS_WEIGHT_NO_MATCH
    score: dict[str, float] = {}
    for weight, ranked in ((1.0, native), (w_cross, cross)):
        for rank, (pid, _s) in enumerate(ranked):
            score[pid] = score.get(pid, 0.0) + weight / (_RRF_K + rank + 1)
    order = {pid: i for i, (pid, _s) in enumerate(cross if not matched else native)}
    return sorted(score, key=lambda pid: (-score[pid], order.get(pid, len(order))))
