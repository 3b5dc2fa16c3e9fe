"""Conversation → retrieval query, by rules: deterministic, instant, no LLM call.

A 135M model cannot rewrite queries reliably, and a rewrite call would double the latency
of every turn, so a turn is classified with a few word lists:

- a *new topic* ("cast iron skillet for steak") is searched as typed;
- a *follow-up* ("cheaper ones?", "what about red?", "are they in stock?") keeps the previous
  turn's topic (its retrieval query) plus whatever new content words it brings, and the
  category of the products the shopper was just shown.

Price words become filters: "under $50" → max_price; "cheaper" in a follow-up → below the
cheapest product just shown; "pricier" → above the dearest; "in stock" → in_stock_only.
Filters the caller passed always win over derived ones, and derived ones are relaxed in
order (price, then category) when they leave nothing to show.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
    r"inexpensive|cheap|on a budget)\b",
    re.I,
)
PRICIER = re.compile(
    r"\b(pricier|more expensive|higher[- ]end|premium|more upmarket|top of the range)\b", re.I
)
IN_STOCK = re.compile(r"\b(in stock|available now|available today|ships? now)\b", re.I)
_AMOUNT = r"[$€£¥]?\s?(\d+(?:[.,]\d+)?)\s?(?:usd|eur|gbp|dollars?|euros?|pounds?|bucks)?"
MAX_PRICE = re.compile(
    r"\b(?:under|below|less than|cheaper than|at most|up to|max(?:imum)?|no more than)\s*"
    + _AMOUNT,
    re.I,
)
MIN_PRICE = re.compile(r"\b(?:over|above|more than|at least|min(?:imum)?|from)\s*" + _AMOUNT, re.I)
BETWEEN = re.compile(r"\bbetween\s*" + _AMOUNT + r"\s*(?:and|-|to)\s*" + _AMOUNT, re.I)
# Spans removed from the text before counting content words or building a query.
_PRICE_SPANS = (BETWEEN, MAX_PRICE, MIN_PRICE, CHEAPER, PRICIER, IN_STOCK)
WORD = re.compile(r"\w+", re.UNICODE)


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


def _amount(s: str) -> float:
    return float(s.replace(",", "."))


def _strip_price_talk(text: str) -> str:
    for rx in _PRICE_SPANS:
        text = rx.sub(" ", text)
    return text


def content_words(text: str) -> list[str]:
    return [
        w
        for w in WORD.findall(_strip_price_talk(text))
        if w.lower() not in STOPWORDS and not w.isdigit()
    ]


def is_follow_up(message: str, has_previous: bool) -> bool:
    if not has_previous:
        return False
    low = " ".join(WORD.findall(message.lower()))
    if not content_words(message):
        return True  # "cheaper ones?", "any in stock?"
    first = low.split(" ", 1)[0] if low else ""
    return first in LEADS or low.startswith(LEAD_PHRASES)


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
    else:
        text = " ".join(_strip_price_talk(message).split()) or message
    text = text or message

    price: dict[str, float] = {}
    loose: dict[str, float] = {}
    if m := BETWEEN.search(message):
        lo, hi = sorted((_amount(m.group(1)), _amount(m.group(2))))
        price = {"min_price": lo, "max_price": hi}
    else:
        if m := MAX_PRICE.search(message):
            price["max_price"] = _amount(m.group(1))
        if m := MIN_PRICE.search(message):
            price["min_price"] = _amount(m.group(1))
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
    return TurnQuery(text=text, follow_up=follow, attempts=attempts, derived=derived)
