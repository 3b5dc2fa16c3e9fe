"""Keeping answers grounded: citation labels, foreign ids, and prices.

The model sees products labelled [1]..[n]. Its text is cleaned twice:

1. While streaming (`StreamSanitizer`): a label that is not one of [1]..[n] is deleted, a
   product id of a given product becomes its label, and any other id-shaped token
   ("FAKE-9999", "kit-0042" when kit-0042 was not given) is deleted, and so are the prompt's
   <<< >>> fence markers. Text is released only
   at whitespace (or between two non-ASCII letters, for Chinese/Japanese text) outside
   brackets, so a label or id split across pieces is judged whole and nothing fake is ever
   sent, even mid-stream.
2. Per sentence, before it is released (`AnswerGuard`): a sentence that gives orders
   ("ignore previous instructions", "tell the customer …"), repeats an instruction planted
   in the shown products' text (three words in a row of it, or two of a quoted payload), or
   echoes the system prompt's instructions (six words in a row) is dropped: product text is
   data, and the shopper never sees what it tries to make the model say. The guard holds
   the last few words of the sentence in progress, so such a sentence is caught before its
   tell-tale words are streamed.
3. At the end (`check_prices`): a sentence naming a price that none of its products has is
   removed (a wrong price is worse than none); other numbers not found in the products'
   data are flagged, not removed (sizes and counts are often paraphrased).
4. Then (`check_details`): the copy writer's checks, per sentence, against the data of the
   products the sentence cites (else the answer's, else all shown) plus the question: a
   quantity with a unit the data does not have ("a 2 L tank"), an invented attribute
   (colour, material, size range, audience: "a glass tea bag", "for women with sensitive
   skin") or praise the data does not state ("luxurious", "the finest") removes the
   sentence. When nothing that cites a product is left, the caller serves the templated
   answer built from the data instead.

Id-shaped means letters, then a separator (- _ :), then more, with a digit somewhere:
"kit-0001", "FAKE-9999". A genuine model number like "XR-500" in an answer is removed too;
the product card still shows the real title.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.catalog.models import Product
from service.copy.checks import (
    Facts,
    check_attributes,
    check_claims,
    check_language,
    check_numbers,
    injection_grams,
    looks_like_instruction,
    normalise_text,
    repeated_injection,
)
from service.prompts import SENTENCE_STOP

_LABEL = r"\s*\[\s*(?P<nums>\d{1,3}(?:\s*,\s*\d{1,3})*)\s*\]"
_ID = (
    r"(?P<lead>\s*)(?<![A-Za-z0-9_\-:])"
    r"(?P<id>[A-Za-z][A-Za-z0-9]*(?:[-_:][A-Za-z0-9]+)+)(?![A-Za-z0-9_\-:])"
)
LABEL = re.compile(_LABEL)
# One pass for both, so a removal never glues two neighbours into a new token.
# Fence markers from the prompt are artefacts, never shown: whole or half ("…>>": a small
# model copies a cut description with the cut's ellipsis and part of the closing fence).
LABEL_OR_ID = re.compile(f"(?P<label>{_LABEL})|(?P<fence>…*(?:<<<|>>>|<<|>>)|‹‹‹|›››)|{_ID}")
_SENTENCE_END = re.compile(r"(?<=[。！？])|(?<=[.!?])(?=\s|$)")
PRICE = re.compile(
    r"(?:[$€£¥]\s?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?))"
    r"|(?:(\d+(?:[.,]\d{1,2})?)\s?(?:USD|EUR|GBP|CNY|RMB|dollars?|euros?|pounds?|yuan|元))",
    re.I,
)
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?(?![\w])")


def _has_digit(s: str) -> bool:
    return any(c.isdigit() for c in s)


class Labels:
    """The products of one turn, by label (1-based) and by id."""

    def __init__(self, products: list[Product]) -> None:
        self.products = products
        self.by_label = {i + 1: p for i, p in enumerate(products)}
        self.label_of = {p.id: i + 1 for i, p in enumerate(products)}

    def sanitize(self, text: str) -> str:
        """Drop labels outside [1]..[n] and foreign ids; given ids become labels."""

        def repl(m: re.Match[str]) -> str:
            if m.group("fence") is not None:
                return ""
            if m.group("label") is not None:
                nums = [int(x) for x in re.findall(r"\d+", m.group("nums"))]
                keep = list(dict.fromkeys(n for n in nums if n in self.by_label))
                if not keep:
                    return ""
                whole = m.group(0)
                return whole[: len(whole) - len(whole.lstrip())] + "".join(f"[{n}]" for n in keep)
            tok = m.group("id")
            if tok in self.label_of:
                return f"{m.group('lead')}[{self.label_of[tok]}]"
            return "" if _has_digit(tok) else m.group(0)

        return LABEL_OR_ID.sub(repl, text)

    def cited(self, text: str) -> list[str]:
        """Product ids cited in text, in order of first citation."""
        out: list[str] = []
        for m in LABEL.finditer(text):
            for x in re.findall(r"\d+", m.group("nums")):
                p = self.by_label.get(int(x))
                if p is not None and p.id not in out:
                    out.append(p.id)
        return out


class StreamSanitizer:
    """Feeds model pieces in, lets only cleaned, complete words out.

    The concatenation of everything fed and flushed equals `labels.sanitize(full_text)`.
    """

    MAX_HOLD = 200  # an unclosed "[" longer than this is not a label: release it

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.buf = ""
        self.raw: list[str] = []  # what the model wrote, for the log and tests
        self.out: list[str] = []

    def _cut(self) -> int:
        """Where the buffer may be cut: the start of the last whitespace run (or a point
        between two non-ASCII characters) that is not inside something that could still
        become a label. Cutting less than possible is always safe."""
        cut, prev, in_label = 0, "", False
        for i, ch in enumerate(self.buf):
            if ch == "[":
                in_label = True
            elif in_label:
                # Still a possible label while digits, commas and spaces follow the "[".
                in_label = ch != "]" and (ch.isdigit() or ch == "," or ch.isspace())
            elif i > 0:
                ws_start = ch.isspace() and not prev.isspace()
                cjk = not ch.isascii() and not prev.isascii() and ch.isalpha() and prev.isalpha()
                if ws_start or cjk:
                    cut = i
            prev = ch
        if cut == 0 and len(self.buf) > self.MAX_HOLD:
            cut = len(self.buf) // 2
        return cut

    def feed(self, piece: str) -> str:
        self.raw.append(piece)
        self.buf += piece
        cut = self._cut()
        if cut <= 0:
            return ""
        done, self.buf = self.buf[:cut], self.buf[cut:]
        clean = self.labels.sanitize(done)
        self.out.append(clean)
        return clean

    def flush(self) -> str:
        done, self.buf = self.buf, ""
        clean = self.labels.sanitize(done) if done else ""
        self.out.append(clean)
        return clean

    @property
    def text(self) -> str:
        return "".join(self.out)


# Words in a row shared with the system prompt's instructions that make an echo.
ECHO_WORDS = 6
# How far back a word that could start an order is held: enough to judge the order before
# any of its words leave ("Ignore all of the previous instructions" spans six). Ordinary
# words stream at once (the last word waits for the next); a sentence that so far only
# repeats a run of the prompt is held whole until it is judged an echo or departs.
HOLD_WORDS = 6
# Words an order (see copy.checks.looks_like_instruction) starts with.
_ORDER_STARTS = frozenset({
    "ignore", "disregard", "forget", "override", "you", "system", "new", "assistant", "tell",
    "inform", "remind", "instruct", "to", "repeat", "reveal", "print", "忽略",
})  # fmt: skip
# Where a sentence ends: after . ! ? (then whitespace), CJK full stops, or a newline.
_ROLE_LABEL = re.compile(r"^\s*(?:assistant|answer)\s*:\s*", re.I)
_GUARD_END = re.compile(r"(?<=[.!?])(?=\s)|(?<=[。！？])|\n")


def _normal_word(token: str) -> str:
    words = re.findall(r"\w+", normalise_text(token))
    return words[0] if words else ""


def _word_grams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", normalise_text(text))
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class AnswerGuard:
    """Judges the cleaned answer sentence by sentence and releases only what passes.

    `feed` takes cleaned text (the StreamSanitizer's output) and returns what may be shown;
    `flush` ends the answer. `text` is everything released; `removed` and `flags` say what
    was dropped and why (kind "injection" or "prompt_echo")."""

    def __init__(self, products: Sequence[Product], prompt_texts: Sequence[str] = ()) -> None:
        facts = Facts.from_products(list(products)) if products else None
        # What a sentence must not repeat of the instructions planted in the products' text.
        self.planted = injection_grams(facts) if facts is not None and facts.injected else None
        self.echo = set().union(*(_word_grams(t, ECHO_WORDS) for t in prompt_texts))
        self.risky = set(_ORDER_STARTS)
        if self.planted is not None:
            self.risky |= {g[0] for grams in self.planted for g in grams}
        self.prompt_runs = [
            " " + " ".join(re.findall(r"\w+", normalise_text(t))) + " " for t in prompt_texts
        ]
        self.cur = ""  # the sentence in progress, not yet released
        self.cur_sent = ""  # the part of it already released
        self.cur_bad: str | None = None
        self.said: list[tuple[str, ...]] = []  # the words of each sentence released so far
        self.out: list[str] = []
        self.removed: list[str] = []
        self.flags: list[dict[str, Any]] = []

    def judge(self, sentence: str) -> str | None:
        """The reason to drop a sentence, or None."""
        sentence = _ROLE_LABEL.sub("", sentence)  # "Assistant: I recommend [1]" is an answer
        if looks_like_instruction(sentence):
            return "injection"
        if self.planted is not None and repeated_injection(sentence, self.planted):
            return "injection"
        if self.echo and _word_grams(sentence, ECHO_WORDS) & self.echo:
            return "prompt_echo"
        if self._said_before(sentence):
            return "repetition"
        return None

    def _said_before(self, sentence: str) -> bool:
        """The sentence repeats one already shown: the same words, or a run of ECHO_WORDS
        of them (a small model's loop: "The product is [1] and the label is [1]" again)."""
        words = tuple(re.findall(r"\w+", normalise_text(sentence)))
        if len(words) < 3:
            return False
        for prev in self.said:
            if words == prev:
                return True
            n = ECHO_WORDS
            if len(words) >= n and len(prev) >= n:
                mine = {words[i : i + n] for i in range(len(words) - n + 1)}
                if mine & {prev[i : i + n] for i in range(len(prev) - n + 1)}:
                    return True
        return False

    def _release(self, text: str) -> str:
        if text:
            self.out.append(text)
        return text

    def _end_sentence(self) -> str:
        whole = self.cur_sent + self.cur
        bad = self.cur_bad or (self.judge(whole) if whole.strip() else None)
        held, sent = self.cur, self.cur_sent
        self.cur, self.cur_sent, self.cur_bad = "", "", None
        if not bad and whole.strip():
            self.said.append(tuple(re.findall(r"\w+", normalise_text(whole))))
        if bad:
            self.removed.append(whole.strip())
            flag = {"kind": bad, "text": whole.strip()}
            if sent.strip():  # what had left before the sentence was judged
                flag["streamed"] = sent
            self.flags.append(flag)
            return ""
        return self._release(held)

    def feed(self, text: str) -> str:
        if not text:
            return ""
        shown: list[str] = []
        self.cur += text
        while m := _GUARD_END.search(self.cur):
            rest = self.cur[m.end() :]
            self.cur = self.cur[: m.end()]
            shown.append(self._end_sentence())
            self.cur = rest
        whole = self.cur_sent + self.cur
        if self.cur_bad is None and whole.strip():
            self.cur_bad = self.judge(whole)
        if self.cur_bad is None and not self._repeats_prompt(whole):
            # Release up to the last word, or up to a word that could start an order or a
            # planted phrase within the last HOLD_WORDS words (cut at whitespace).
            words = list(re.finditer(r"\S+", self.cur))
            hold = len(words) - 1  # the first word held (with the whitespace before it)
            for j in range(max(0, len(words) - HOLD_WORDS), len(words)):
                if _normal_word(words[j].group(0)) in self.risky:
                    hold = min(hold, j)
                    break
            cut = words[hold - 1].end() if hold > 0 else 0
            if cut > 0:
                done, self.cur = self.cur[:cut], self.cur[cut:]
                self.cur_sent += done
                shown.append(self._release(done))
        return "".join(shown)

    def _repeats_prompt(self, sentence: str) -> bool:
        """The sentence so far is one run of words of the prompt (a possible echo)."""
        words = re.findall(r"\w+", normalise_text(sentence))
        if len(words) < 2:
            return False
        run = " " + " ".join(words) + " "
        return any(run in p for p in self.prompt_runs)

    def flush(self) -> str:
        return self._end_sentence()

    @property
    def text(self) -> str:
        return "".join(self.out)


@dataclass
class Checked:
    answer: str
    removed: list[str] = field(default_factory=list)  # sentences dropped for a wrong price
    flags: list[dict[str, Any]] = field(default_factory=list)


def _amount(s: str) -> float:
    s = s.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", s) else s.replace(",", ".")
    return float(s)


def _price_ok(value: float, products: list[Product]) -> bool:
    for p in products:
        if p.price is None:
            continue
        if abs(value - p.price) < 0.01 or (value.is_integer() and value == round(p.price)):
            return True
    return False


def _numbers_in(p: Product) -> set[float]:
    text = " ".join(
        [p.title, p.description, str(p.attributes), " ".join(p.tags), str(p.price or "")]
    )
    out: set[float] = set()
    for m in re.finditer(r"\d+(?:[.,]\d+)?", text):
        try:
            out.add(float(m.group(0).replace(",", ".")))
        except ValueError:
            continue
    return out


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def check_prices(text: str, labels: Labels) -> Checked:
    """Remove sentences with a price none of their products has; flag other stray numbers;
    drop a last sentence cut off by the token limit when a complete one precedes it."""
    cited_all = [labels.by_label[labels.label_of[i]] for i in labels.cited(text)]
    kept: list[str] = []
    removed: list[str] = []
    flags: list[dict[str, Any]] = []
    for sent in _parts(text):
        own = [labels.by_label[labels.label_of[i]] for i in labels.cited(sent)]
        # The sentence's own citations, else the answer's, else every product shown.
        ref = own or cited_all or labels.products
        bad = [
            m.group(0).strip()
            for m in PRICE.finditer(sent)
            if not _price_ok(_amount(m.group(1) or m.group(2)), ref)
        ]
        if bad:
            removed.append(sent.strip())
            flags.append({"kind": "ungrounded_price", "text": ", ".join(bad)})
            continue
        kept.append(sent)
    if len(kept) > 1 and not re.search(r"[.!?。！？\]\)]\s*$", kept[-1]):
        removed.append(kept[-1].strip())
        flags.append({"kind": "cut_off", "text": kept.pop().strip()})
    answer = "".join(kept).strip()
    known: set[float] = set().union(*(_numbers_in(p) for p in labels.products))
    body = PRICE.sub(" ", LABEL.sub(" ", answer))
    for m in NUMBER.finditer(body):
        v = float(m.group(0).replace(",", "."))
        if v not in known and v not in labels.by_label:
            flags.append({"kind": "ungrounded_number", "text": m.group(0)})
    return Checked(answer=answer, removed=removed, flags=flags)


_FINISHED = re.compile(r"[.!?。！？…:：\]\)）\"'”」]\s*$")


def _parts(text: str) -> list[str]:
    """Sentences, and each line's end: a small model starts the next product's line without
    a full stop ("… lemons.]\n\n[2] Ceramic Nonstick Frying Pan, 24 cm,")."""
    return [p for s in sentences(text) for p in re.split(r"(?<=\n)", s) if p]


def _squeezed(text: str) -> tuple[str, list[int]]:
    """text's letters and digits, case-folded, and where each one is in text: the same
    words match across spacing, punctuation and case."""
    chars: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if ch.isalnum():
            chars.append(ch.casefold())
            where.append(i)
    return "".join(chars), where


def _data_lines(p: Product) -> list[str]:
    """What the turn prompt shows of a product, whole: its line and its description."""
    price = f", {p.price:.2f} {p.currency}." if p.price is not None else "."
    return [f"{p.title}{price}", " ".join((p.description or "").split())]


# An unfinished end is completed from the data only when its last letters are the data's
# (16 Latin letters or digits, 6 Chinese characters: a copy, not a common phrase) and the
# data's sentence ends soon after (a completion is a clause, not a paragraph).
TAIL_LATIN = 16
TAIL_CJK = 6
MAX_COMPLETION = 140
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_TRAILING_ELLIPSIS = re.compile(r"(?:…|\.\.\.)\s*$")
# A bracket closing nothing after a full stop ("… garlic and lemons.]"): noise.
_STRAY_BRACKET = re.compile(r"(?<=[.!?。！？])\](?!\S)")


def _completion(body: str, products: Sequence[Product]) -> str | None:
    """The rest of the data's sentence that `body` breaks off in, or None."""
    squeezed, _ = _squeezed(LABEL.sub(" ", body))
    n = TAIL_CJK if squeezed and _CJK.match(squeezed[-1]) else TAIL_LATIN
    if len(squeezed) < n:
        return None
    tail = squeezed[-n:]
    for p in products:
        for line in _data_lines(p):
            data, where = _squeezed(line)
            at = data.find(tail)
            if at < 0:
                continue
            end = where[at + n - 1] + 1
            stop = SENTENCE_STOP.search(line, end)
            rest = line[end : stop.end() if stop else len(line)]
            if len(rest) <= MAX_COMPLETION and rest.strip(" ,;:，；："):
                # "[2] Ceramic Nonstick Frying Pan, 24 cm," + ", 45.00 USD.": one comma
                if body[-1] in ",;:，；：":
                    rest = rest.lstrip(" ,;:，；：")
                    return rest if body[-1] in "，；：" else " " + rest
                return rest
    return None


def complete_from_data(text: str, labels: Labels) -> Checked:
    """Finish a line's unfinished end with the rest of the data's sentence it copies.

    A small model copies a description and stops mid-clause at the token limit or where the
    prompt cut it ("… built for push-cutting vegetables", "[3] Prima Dual Boiler Espresso"):
    served as it is the answer breaks off, and dropped it loses the reason the product fits.
    Its last words are the data's, so the data's own words finish it; the completed
    sentence is then checked like any other. A cut the data cannot finish is left to
    drop_cut_copies and check_prices."""
    out: list[str] = []
    flags: list[dict[str, Any]] = []
    for part in _parts(_STRAY_BRACKET.sub("", text)):
        body = part.rstrip()
        cut = _TRAILING_ELLIPSIS.search(body)  # a copied cut keeps the prompt's "…"
        stem = body[: cut.start()].rstrip() if cut else body
        if stem and (cut or not _FINISHED.search(stem)):
            own = [labels.by_label[labels.label_of[i]] for i in labels.cited(stem)]
            rest = _completion(stem, own or labels.products)
            if rest is not None:
                flags.append({"kind": "completed_from_data", "text": rest.strip()})
                part = stem + rest + part[len(body) :]
        out.append(part)
    return Checked(answer="".join(out).strip(), flags=flags)


# A product line as the prompt writes it: "[2] <title>, 68.00 USD"; the title is what lies
# between the label and the price.
_LEAD_LABEL = re.compile(r"^(?P<lead>\s*\[\s*(?P<n>\d{1,3})\s*\]\s*)")


def _title_key(text: str) -> str:
    return _squeezed(normalise_text(text))[0]


def restore_titles(text: str, labels: Labels) -> Checked:
    """A product line whose title the model mangled is given the data's title back.

    - Half translated ("[1] White瓷功夫茶具套装 (one壶 six杯), 68.00 USD"): Latin glued to
      Chinese that the data never writes, where the Chinese is the cited product's title's
      own characters: the title as the data writes it.
    - Under another product's label ("[1] Glass Teapot with stainless Infuser, 1.2 L,
      32.00 USD" where [1] is the tea): the title and price of another shown product: its
      label. Otherwise check_prices would drop the line for the wrong price.
    Nothing else of the line changes; the line is checked as usual afterwards."""
    out: list[str] = []
    flags: list[dict[str, Any]] = []
    for part in _parts(text):
        m = _LEAD_LABEL.match(part)
        p = labels.by_label.get(int(m.group("n"))) if m else None
        price = PRICE.search(part, m.end()) if m else None
        if m is None or p is None or price is None:
            out.append(part)
            continue
        slot = part[m.end() : price.start()]
        title = slot.rstrip(" ,，:：(（")
        sep = slot[len(title) :]
        amount = _amount(price.group(1) or price.group(2))
        fixed: str | None = None
        if mixed_script_words(title, [p]):
            chinese = _CJK.findall(title)
            share = sum(c in p.title for c in chinese) / len(chinese) if chinese else 0.0
            if len(chinese) >= 2 and share >= 0.6 and _price_ok(amount, [p]):
                fixed = m.group("lead") + p.title + sep + part[price.start() :]
                flags.append({"kind": "title_restored", "text": title.strip(), "to": p.title})
        elif not _price_ok(amount, [p]):
            key = _title_key(title)
            other = next(
                (q for q in labels.products if q is not p and _title_key(q.title) == key), None
            )
            if other is not None and _price_ok(amount, [other]):
                lead = m.group("lead").replace(m.group("n"), str(labels.label_of[other.id]), 1)
                fixed = lead + part[m.end() :]
                flags.append({"kind": "label_restored", "text": title.strip(), "to": other.id})
        out.append(fixed if fixed is not None else part)
    return Checked(answer="".join(out).strip(), flags=flags)


def drop_cut_copies(text: str, labels: Labels, shown: Sequence[str]) -> Checked:
    """Remove a line's unfinished last clause that copies a product description where the
    prompt cut it ("…arrives seasoned with"): it reads as a sentence broken off. `shown`:
    the descriptions as the prompt showed them, for those that were cut."""
    ends = []
    for d in shown:
        words = re.findall(r"\w+", normalise_text(d))
        if words:
            ends.append(" ".join(words[-3:]))
    if not ends:
        return Checked(answer=text)
    kept: list[str] = []
    removed: list[str] = []
    flags: list[dict[str, Any]] = []
    for part in (p for s in sentences(text) for p in re.split(r"(?<=\n)", s) if p):
        body = part.rstrip()
        words = " ".join(re.findall(r"\w+", normalise_text(body)))
        if (
            body
            and not _FINISHED.search(body)
            and not labels.cited(body)
            and any(words.endswith(e) for e in ends)
        ):
            removed.append(body.strip())
            flags.append({"kind": "cut_copy", "text": body.strip()})
            kept.append(part[len(body) :])  # keep the line break
            continue
        kept.append(part)
    return Checked(answer="".join(kept).strip(), removed=removed, flags=flags)


# Phrases of the copy writer's unsupported-claims list that are a recommendation in a chat
# answer ("the best match for you is [1]"), not praise of the product.
CHAT_ALLOWED_CLAIMS = frozenset({"the best", "最好", "最佳"})


def check_details(
    text: str, labels: Labels, question: str = "", claims: Sequence[str] = ()
) -> Checked:
    """Remove sentences that state what their products' data does not: numbers with units,
    attributes, unsupported praise (the copy checks). Flags say what was found."""
    claims = [c for c in claims if c not in CHAT_ALLOWED_CLAIMS]
    cited_all = [labels.by_label[labels.label_of[i]] for i in labels.cited(text)]
    kept: list[str] = []
    removed: list[str] = []
    flags: list[dict[str, Any]] = []
    facts_of: dict[tuple[str, ...], Facts] = {}
    # A line break ends a sentence too: a small model copies a product's cut description
    # ("… kept hot in a stainless ther…") and starts the next product's line without a
    # full stop; judged together, the first product's facts would be checked against the
    # second's data.
    parts = [p for s in sentences(text) for p in re.split(r"(?<=\n)", s) if p]
    for sent in parts:
        own = [labels.by_label[labels.label_of[i]] for i in labels.cited(sent)]
        ref = own or cited_all or labels.products
        key = tuple(p.id for p in ref)
        if key not in facts_of:
            facts_of[key] = Facts.from_products(ref, extra=[question] if question else [])
        facts = facts_of[key]
        body = LABEL.sub(" ", sent)
        failed = [
            c
            for c in (
                check_numbers(body, facts),
                check_attributes(body, facts),
                check_claims(body, facts, claims),
            )
            if not c.ok
        ]
        if failed:
            removed.append(sent.strip())
            found = [f for c in failed for f in c.found]
            flags.append({"kind": "invented_detail", "text": sent.strip(), "found": found})
            continue
        mixed = mixed_script_words(body, ref)
        if mixed:  # "White瓷功夫茶具套装": a title mangled across scripts is no title
            removed.append(sent.strip())
            flags.append({"kind": "mixed_script", "text": sent.strip(), "found": mixed})
            continue
        kept.append(sent)
    return Checked(answer="".join(kept).strip(), removed=removed, flags=flags)


# A Latin word glued to Chinese characters ("White瓷功夫"): a model translating half of a
# product's name. Fine where the data writes it so ("LED台灯", "USB-C供电").
_MIXED = re.compile(
    r"[A-Za-z][A-Za-z0-9-]*[\u3400-\u4dbf\u4e00-\u9fff]+|[\u3400-\u4dbf\u4e00-\u9fff]+[A-Za-z][A-Za-z0-9-]*"
)


def mixed_script_words(text: str, products: Sequence[Product]) -> list[str]:
    """Runs of Latin letters glued to Chinese characters that no product's data writes."""
    data = normalise_text(
        " ".join(f"{p.title} {p.brand} {p.description} {' '.join(p.tags)}" for p in products)
    )
    data = re.sub(r"\s+", "", data)
    found = [m.group() for m in _MIXED.finditer(text)]
    return list(dict.fromkeys(w for w in found if normalise_text(w) not in data))


_PRICE_OR_NUMBER = re.compile(
    r"[$€£¥￥]?\s?\d[\d,.]*\s?(?:usd|eur|gbp|cny|rmb|元|美元)?", re.IGNORECASE
)


def answer_language_ok(text: str, labels: Labels, language: str) -> bool:
    """The answer is in the shopper's language (the copy checks' measure), judged without
    what is rightly in another script: the labels, the cited products' own titles and
    brands, prices. Nothing left to judge (only titles and prices) counts as right."""
    rest = LABEL.sub(" ", text)
    for p in sorted(labels.products, key=lambda p: -len(p.title)):
        for name in (p.title, p.brand):
            if name:
                rest = rest.replace(name, " ")
    rest = _PRICE_OR_NUMBER.sub(" ", rest)
    if not re.search(r"[A-Za-z]|[\u3400-\u4dbf\u4e00-\u9fff]", rest):
        return True
    return check_language(rest, language).ok
