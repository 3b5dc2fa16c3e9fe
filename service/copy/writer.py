"""Render prompt → generate → check → retry → store, for one request or a batch of them.

Every text the model writes is checked (`checks.run_checks`). A text that fails is
written again from a fresh prompt that restates the task with stricter rules
(`copy_retry.<lang>`, chosen by the NAMES of the failed checks; the rejected text is never
shown to the model, which would copy it) up to `settings.copy_max_retries` times; if it
still fails it is stored and returned flagged with its failed checks, or refused
(`copy_on_fail=refuse`: stored as rejected, returned with text None). A text that copies
the prompt or an instruction (echo, injection) or loops (repetition) is always refused: it
is never served. A headline whose every attempt failed gets a headline built from data
alone (`copy_headline_fallback.<lang>`: the shopper's latest interest, shortened to fit,
and what the set shares, else the set's shared tag or categories) when it passes every
check.

The prompt: the fixed system rules, one worked example (an invented product, the same
request form, a restrained answer: `copy_example.<lang>`), then the real product's data and
task. The fixed part comes first so a backend can reuse its cached prefix. Decoding uses
repetition control (`writer_repetition_penalty`) and a token budget derived from the
length limit (`tasks.token_budget`).

All prompts of one pass go to the model in ONE `generate` call (variants and batch
products alike); the retries of a pass share one call too.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from service.assistant.glossary import ZH_CATEGORY, ZH_EN
from service.catalog.models import Product
from service.catalog.store import CatalogStore, NotFound
from service.config import Settings, get_settings
from service.copy.checks import (
    CheckResult,
    Facts,
    Limits,
    cjk_ratio,
    clean_output,
    drop_repeated_sentences,
    echo_grams,
    fit_sentences,
    normalise_text,
    run_checks,
)
from service.copy.store import CopyStore, canonical_json, request_key, to_result
from service.copy.structured import generate_json, headline_notes_schema, variants_schema
from service.copy.tables import CopyRow
from service.copy.tasks import (
    BLURB_WORDS,
    LANGUAGES,
    SPECS,
    CopyOptions,
    CopyRequest,
    CopyResult,
    HeadlineRequest,
    HeadlineResult,
    ItemFit,
    normalise_language,
    token_budget,
)
from service.llm.base import LLM, GenParams, Message
from service.llm.factory import get_llm
from service.llm.log import log_context
from service.prompts import PromptLibrary, library
from service.retrieval.encoder import encoder_for
from service.vocab import ProductTask

# Sampling defaults when several variants are asked for and no temperature is given.
VARIANT_TEMPERATURE = 0.8
VARIANT_TOP_P = 0.95
# Description characters shown to the model: enough for the facts, short for a small model.
DESCRIPTION_CHARS = 500
# Recent products of a user's history that personalise a headline.
INTEREST_ITEMS = 3
# Checks whose failure means the text is an instruction, the prompt or a loop, not copy:
# such a text is refused whatever copy_on_fail says.
NEVER_SERVED = ("echo", "injection", "repetition")
# The prompt asks for this share of the checked limit: small models overshoot what they
# are told by a few words, and a text a little under the limit passes.
PROMPT_LIMIT_SHARE = 0.75


def distinct_interests(texts: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Texts once each, in order (compared by letters, digits and CJK characters,
    ignoring case), without those in `exclude`: a headline prompt that lists "Kitchen"
    twice invites "Kitchen, Cooking, Cooking"."""
    seen = {_key(t) for t in exclude}
    out: list[str] = []
    for t in texts:
        k = _key(t)
        if k and k not in seen:
            seen.add(k)
            out.append(t)
    return out


def _key(text: str) -> str:
    return "".join(ch for ch in normalise_text(text) if ch.isalnum())


def prompt_limit(limit: int | None) -> int | None:
    """The length the prompt asks for, under the limit the checks enforce."""
    return None if limit is None else max(1, round(limit * PROMPT_LIMIT_SHARE))


def theme_categories(products: Sequence[Product]) -> list[str]:
    """A headline set's categories as the data block shows them, with their Chinese
    names: what a headline that only lists categories copies."""
    cats = distinct_interests([p.category for p in products if p.category])
    return cats + [ZH_CATEGORY[c.lower()] for c in cats if c.lower() in ZH_CATEGORY]


# A title's specs: a parenthesis or what follows a comma ("Santoku Knife, 17 cm").
_TITLE_SPECS = (re.compile(r"\s*[(（].*$"), re.compile(r"\s*[,，;；].*$"))
# Where a title still too long for a fallback headline is cut next, in order: a space
# before a Chinese title's spec ("传统手工铁锅 34厘米"), then " with ...".
_TITLE_CUTS = (
    re.compile(r"(?<=[\u3400-\u9fff])\s+\S.*$"),
    re.compile(r"\s+with\s+.*$", re.IGNORECASE),
)


_TITLE_TRIM = " ,，;；:：-–—"
# An English shop tag in Chinese: the glossary's word whose English is exactly the tag
# (its first such entry: "kettle" -> "烧水壶").
_EN_ZH_TERM = {en: zh for zh, en in reversed(list(ZH_EN.items()))}


def short_titles(title: str) -> list[str]:
    """A title as a headline names it, then shorter forms, longest first, each cut where
    a reader would stop and never mid-word. The first form drops the specs (a
    parenthesis, what follows a comma): "Santoku Knife, 17 cm" -> ["Santoku Knife"];
    "白瓷功夫茶具套装（一壶六杯）" -> ["白瓷功夫茶具套装"]; "LED Desk Lamp with USB Charging
    Port, 12 W" -> ["LED Desk Lamp with USB Charging Port", "LED Desk Lamp"]."""
    text = " ".join(title.split())
    for spec in _TITLE_SPECS:
        head = spec.sub("", text).strip(_TITLE_TRIM)
        if _key(head):
            text = head
    forms = [text]
    for cut in _TITLE_CUTS:
        shorter = cut.sub("", forms[-1]).strip(_TITLE_TRIM)
        if _key(shorter):
            forms.append(shorter)
    return list(dict.fromkeys(forms))


def shared_tag(products: Sequence[Product], language: str) -> str | None:
    """A tag every item of the set carries (two items or more), in the headline's
    language: Chinese tags as they are, English ones through the glossary; None when
    the set shares none ("tea" is more specific than "Coffee & Tea")."""
    if len(products) < 2:
        return None
    common = set.intersection(*({t.strip().lower() for t in p.tags or []} for p in products))
    for tag in products[0].tags or []:  # the first item's order: its own most telling tag
        t = tag.strip().lower()
        if t not in common or not t:
            continue
        cjk = cjk_ratio(t) > 0.5
        if language == "zh":
            if cjk:
                return t
            if t in _EN_ZH_TERM:
                return _EN_ZH_TERM[t]
        elif not cjk:
            return t
    return None


@dataclass
class Draft:
    """One text in the making: what to ask, how to judge it, and what came back."""

    task: str
    products: list[Product]
    language: str
    params: dict[str, Any]
    variant: int
    key: str
    facts: Facts
    limits: Limits
    keywords: list[str]
    variables: dict[str, Any]
    gen: GenParams
    template: str
    template_version: str
    templates: dict[str, str]
    topic_check: bool
    text: str = ""
    raw: str = ""
    prompt: list[Message] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    attempts: int = 0
    model_id: str = ""
    backend: str = ""
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # A headline's item and interest titles: it must name a theme, not copy one of them.
    titles: list[str] = field(default_factory=list)
    # A headline's set categories (English and Chinese names): listing them is no theme.
    categories: list[str] = field(default_factory=list)
    # The served text is the templated fallback (a headline whose every attempt failed).
    fallback: bool = False

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]


class CopyWriter:
    """The copy service. Heavy parts (the LLM, the encoder) load on first use."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        llm: LLM | None = None,
        catalog: CatalogStore | None = None,
        store: CopyStore | None = None,
        encoder: Any | None = None,
        prompts: PromptLibrary | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self._llm = llm
        self.catalog = catalog or CatalogStore(self.settings.db_url)
        self.store = store or CopyStore(self.catalog.engine)
        self._encoder = encoder
        self.prompts = prompts or library()

    # -- parts ------------------------------------------------------------------------
    @property
    def llm(self) -> LLM:
        if self._llm is None:
            self._llm = get_llm(self.settings, role="writer")
        return self._llm

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = encoder_for(self.settings)
        return self._encoder

    # -- public API -------------------------------------------------------------------
    def generate(self, req: CopyRequest) -> list[CopyResult]:
        """One product, one task; a result per variant. Raises NotFound for an unknown id."""
        product = self.catalog.get_product(req.product_id)
        options = CopyOptions(**req.model_dump(exclude={"task", "product_id", "regenerate"}))
        return self.generate_for_products(req.task, [product], options, regenerate=req.regenerate)[
            0
        ]

    def generate_for_products(
        self,
        task: str,
        products: Sequence[Product],
        options: CopyOptions,
        *,
        regenerate: bool = False,
        job_id: int | None = None,
        session: Session | None = None,
    ) -> list[list[CopyResult]]:
        """The same task for many products: stored texts are reused, the rest are written
        in one `generate` call (plus one per retry round). Results per product, per variant.
        With `session`, new rows join the caller's transaction (batch jobs commit them
        together with their progress)."""
        if task not in set(ProductTask):
            raise ValueError(f"unknown product task {task!r}: use summary, title or blurb")
        drafts = [self._plan_product(task, p, options) for p in products]
        flat = [d for per in drafts for d in per]
        results = self._run(flat, regenerate=regenerate, job_id=job_id, session=session)
        out: list[list[CopyResult]] = []
        i = 0
        for per in drafts:
            out.append(results[i : i + len(per)])
            i += len(per)
        return out

    def plan(
        self, task: str, products: Sequence[Product], options: CopyOptions
    ) -> list[list[Message]]:
        """The first variant's prompt for each product, as generation would send it (no
        model call, nothing stored): for benchmarks that time the prompt alone."""
        return [self._messages(self._plan_product(task, p, options)[0]) for p in products]

    def headline(self, req: HeadlineRequest) -> HeadlineResult:
        """A theme headline for recommended items, with each item's fit to it."""
        found = self.catalog.get_products(req.product_ids)
        missing = [pid for pid in req.product_ids if pid not in found]
        if missing:
            raise NotFound(f"unknown product id(s): {', '.join(missing[:5])}")
        products = [found[pid] for pid in req.product_ids]
        interests = list(req.interests)
        if not interests and req.user_id:
            interests = self.user_interests(req.user_id)
        # The shopper's language: the request's, else their interests' (their history),
        # else the items'. Never just the first product's.
        language = req.language or (self._text_language(interests) if interests else None)
        drafts = self._plan_headline(products, interests, req, language)
        results = self._run(drafts, regenerate=req.regenerate)
        chosen = next((r for r in results if r.passed), results[0])
        text = chosen.text or ""
        scores = self.fit_scores(text, products) if text else [0.0] * len(products)
        items = [
            ItemFit(product_id=p.id, score=round(s, 4), keep=bool(text) and s >= req.threshold)
            for p, s in zip(products, scores, strict=True)
        ]
        return HeadlineResult(
            headline=chosen,
            variants=results,
            items=items,
            kept=[i.product_id for i in items if i.keep],
            interests=interests,
            threshold=req.threshold,
        )

    def user_interests(self, user_id: str) -> list[str]:
        """Titles of the user's most recent distinct products, newest first."""
        history = self.catalog.user_history(user_id, limit=50)
        if not history:
            raise NotFound(f"unknown user id {user_id!r} (no interactions stored)")
        recent = list(dict.fromkeys(pid for pid, _e, _t in reversed(history)))[:INTEREST_ITEMS]
        products = self.catalog.get_products(recent)
        return [products[pid].title for pid in recent if pid in products]

    def fit_scores(self, headline: str, products: Sequence[Product]) -> list[float]:
        """Cosine between the headline and each item's text (the encoder normalises), on
        MiniLM's scale: e5's cosines all sit above 0.7, so its spec rescales them."""
        vecs = np.asarray(self.encoder.encode([headline] + [p.embedding_text() for p in products]))
        spec = getattr(self.encoder, "spec", None)
        return [spec.calibrated(float(v)) if spec else float(v) for v in vecs[1:] @ vecs[0]]

    def recheck(self, copy_id: int, text: str) -> dict[str, dict[str, Any]]:
        """The writer's own checks on a person's text, against the row's product data
        (as it is now) and its request's limits and keywords: {name: {ok, detail, found}}."""
        row = self.store.get(copy_id)
        products = list(self.catalog.get_products(row.product_ids).values())
        extra = list(row.params.get("interests", [])) + list(row.params.get("keywords", []))
        facts = Facts.from_products(products, extra=extra) if products else Facts.from_fields([])
        spec = SPECS[row.task]
        checks = run_checks(
            text.strip(),
            facts,
            language=row.language,
            limits=self._limits(row.task, row.language, row.params),
            banned=self.settings.banned_claims,
            topic=spec.topic_check and bool(products),
            keywords=row.params.get("keywords", []),
            claims=self.settings.unsupported_claims,
            # The items' titles only: a person's headline may name the shopper's interest
            # as its reason ("Because you viewed the Santoku Knife", as the fallback does);
            # copying an item's own title is still caught.
            titles=[p.title for p in products] if row.task == "headline" else (),
            categories=theme_categories(products) if row.task == "headline" else (),
        )
        return {c.name: c.as_dict() for c in checks}

    def edit(self, copy_id: int, text: str) -> CopyResult:
        """A person's edit, re-checked; its outcome becomes the row's verdict (back to draft)."""
        return self.store.edit(copy_id, text, self.recheck(copy_id, text))

    def approve(self, copy_id: int, text: str | None = None) -> CopyResult:
        """Approve the shown text, or `text` instead: an edit is re-checked first and
        refused (CopyCheckFailed, nothing stored) when it fails a check."""
        if text is None or not text.strip():
            return self.store.approve(copy_id)
        return self.store.approve(copy_id, text, self.recheck(copy_id, text))

    # -- texts with parts, as JSON ----------------------------------------------------
    def blurb_variants(
        self, product_id: str, n: int = 3, options: CopyOptions | None = None
    ) -> dict[str, Any]:
        """n blurbs for one product in ONE model call, as constrained JSON; each variant
        checked like a blurb. Not stored: a studio's "give me options" preview.
        {"variants": [{"text", "passed", "failed_checks"}], "attempts", "model_id"}."""
        options = options or CopyOptions()
        product = self.catalog.get_product(product_id)
        [draft] = self._plan_product("blurb", product, options.model_copy(update={"variants": 1}))
        limit = draft.params.get("max_chars") or draft.params.get("max_words") or 50
        chars = limit if draft.language == "zh" else limit * 6
        # The grammar closes the JSON only if the budget lets every string reach its cap
        # (a token is at least one character): the cap, not the usual length, sets it.
        system = self.prompts.render(f"copy_system.{draft.language}", **draft.variables).text
        user = self.prompts.render(f"copy_variants.{draft.language}", **draft.variables, n=n).text
        messages: list[Message] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        res = generate_json(
            self.llm, messages, variants_schema(n, chars),
            max_tokens=min(n * (chars + 8) + 32, 2048),
            repetition_penalty=self.settings.writer_repetition_penalty,
            temperature=options.temperature or 0.0, seed=options.seed,
        )  # fmt: skip
        out = []
        for text in res.data["variants"]:
            text = fit_sentences(clean_output(text), draft.language, draft.limits)
            checks = run_checks(
                text, draft.facts, language=draft.language, limits=draft.limits,
                banned=self.settings.banned_claims, topic=True, keywords=draft.keywords,
                claims=self.settings.unsupported_claims,
            )  # fmt: skip
            failed = [c.name for c in checks if not c.ok]
            out.append({"text": text, "passed": not failed, "failed_checks": failed})
        return {"variants": out, "attempts": res.attempts, "model_id": self.llm.model_id}

    def headline_with_notes(
        self,
        product_ids: Sequence[str],
        interests: Sequence[str] = (),
        language: str | None = None,
    ) -> dict[str, Any]:
        """A theme headline and one note per item in ONE model call, as constrained JSON;
        the headline checked like a headline, each note against its own product's data.
        {"headline", "headline_checks", "notes": [{"product_id", "note", "passed",
        "failed_checks"}], "attempts", "language"}."""
        found = self.catalog.get_products(list(product_ids))
        missing = [pid for pid in product_ids if pid not in found]
        if missing:
            raise NotFound(f"unknown product id(s): {', '.join(missing[:5])}")
        products = [found[pid] for pid in product_ids]
        language = language or (self._text_language(list(interests)) if interests else None)
        req = HeadlineRequest(product_ids=list(product_ids), interests=list(interests))
        [draft] = self._plan_headline(products, list(interests), req, language)
        lang = draft.language
        system = self.prompts.render(f"copy_system.{lang}", **draft.variables).text
        user = self.prompts.render(f"copy_headline_notes.{lang}", **draft.variables).text
        messages: list[Message] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        note_chars, head_chars = (40, 24) if lang == "zh" else (120, 80)
        res = generate_json(
            self.llm, messages,
            headline_notes_schema(len(products), head_chars, note_chars),
            max_tokens=min(head_chars + len(products) * (note_chars + 8) + 32, 2048),
            repetition_penalty=self.settings.writer_repetition_penalty,
        )  # fmt: skip
        headline = clean_output(res.data["headline"], single_line=True)
        h_checks = run_checks(
            headline, draft.facts, language=lang, limits=draft.limits,
            banned=self.settings.banned_claims, topic=False,
            claims=self.settings.unsupported_claims, titles=draft.titles,
            categories=draft.categories,
        )  # fmt: skip
        notes = []
        for p, note in zip(products, res.data["notes"], strict=True):
            note = clean_output(note)
            checks = run_checks(
                note, Facts.from_products([p]), language=lang,
                limits=Limits(max_words=None, max_chars=None, single_line=False),
                banned=self.settings.banned_claims, topic=False,
                claims=self.settings.unsupported_claims,
            )  # fmt: skip
            failed = [c.name for c in checks if not c.ok]
            notes.append(
                {"product_id": p.id, "note": note, "passed": not failed, "failed_checks": failed}
            )
        return {
            "headline": headline,
            "headline_checks": [c.name for c in h_checks if not c.ok],
            "notes": notes,
            "attempts": res.attempts,
            "language": lang,
        }

    # -- planning ---------------------------------------------------------------------
    @staticmethod
    def _text_language(texts: Sequence[str]) -> str:
        """'zh' when the texts are mostly Chinese, else 'en'."""
        return "zh" if cjk_ratio(" ".join(texts)) > 0.5 else "en"

    def _language(self, requested: str | None, products: Sequence[Product]) -> str:
        """The requested language, else the products' (the majority; ties go to English)."""
        if requested:
            return requested
        votes: dict[str, int] = {}
        for p in products:
            try:
                lang = normalise_language(p.language)
            except ValueError:
                continue  # a language we have no prompts for: fall back to English
            if lang:
                votes[lang] = votes.get(lang, 0) + 1
        if not votes:
            return "en"
        best = max(votes.values())
        return "en" if votes.get("en") == best else max(votes, key=lambda k: votes[k])

    def _limits(self, task: str, language: str, params: dict[str, Any]) -> Limits:
        spec = SPECS[task]
        return Limits(
            max_words=params.get("max_words") if language != "zh" else None,
            max_chars=params.get("max_chars") if language == "zh" else None,
            single_line=spec.single_line,
        )

    def _template_family(self, task: str, language: str) -> tuple[str, str, dict[str, str]]:
        """(task template, combined version, {name: version}): the version covers every
        file the prompt is built from, so editing any of them invalidates stored texts."""
        names = [
            f"copy_system.{language}",
            f"copy_example.{language}",
            f"copy_items.{language}" if task == "headline" else f"copy_product.{language}",
            f"copy_{task}.{language}",
            f"copy_retry.{language}",
        ]
        if task == "headline":  # what a headline serves when every attempt fails
            names.append(f"copy_headline_fallback.{language}")
        versions = {n: self.prompts.version(n) for n in names}
        combined = hashlib.sha256(canonical_json(versions).encode()).hexdigest()[:12]
        return f"copy_{task}.{language}", combined, versions

    def _policy(self) -> str:
        """The checking policy; a change of it invalidates stored texts."""
        s = self.settings
        policy = {
            "banned": sorted(s.banned_claims),
            "claims": sorted(s.unsupported_claims),
            "retries": s.copy_max_retries,
            "on_fail": s.copy_on_fail,
            "checks": 3,  # the check suite's version: claims, attributes, echo, repetition, theme
        }
        return hashlib.sha256(canonical_json(policy).encode()).hexdigest()[:12]

    def _sampling(
        self,
        variants: int,
        seed: int,
        temperature: float | None,
        max_tokens: int,
        single_line: bool,
    ) -> tuple[GenParams, dict[str, Any]]:
        temp = (
            temperature
            if temperature is not None
            else (VARIANT_TEMPERATURE if variants > 1 else 0.0)
        )
        # A one-line task ends at the first newline: a small model otherwise repeats itself.
        stop = ("\n",) if single_line else ()
        penalty = self.settings.writer_repetition_penalty
        if temp > 0:
            gen = GenParams(
                max_tokens=max_tokens, temperature=temp, top_p=VARIANT_TOP_P, seed=seed,
                stop=stop, repetition_penalty=penalty,
            )  # fmt: skip
            return gen, {
                "temperature": temp, "top_p": VARIANT_TOP_P, "seed": seed,
                "repetition_penalty": penalty,
            }  # fmt: skip
        gen = GenParams(max_tokens=max_tokens, stop=stop, repetition_penalty=penalty)
        return gen, {"temperature": 0.0, "repetition_penalty": penalty}

    def _plan_product(self, task: str, product: Product, options: CopyOptions) -> list[Draft]:
        spec = SPECS[task]
        language = self._language(options.language, [product])
        params: dict[str, Any] = {"language": language, "variants": options.variants}
        if task == "blurb":
            words = options.max_words or BLURB_WORDS[options.length]
            params |= {"tone": options.tone, "length": options.length, "keywords": options.keywords}
        else:
            words = options.max_words or spec.max_words
        if language == "zh":
            params["max_chars"] = options.max_chars or (
                2 * words if task == "blurb" else spec.max_chars
            )
        else:
            params["max_words"] = words
        max_tokens = options.max_tokens or token_budget(
            params.get("max_words"), params.get("max_chars")
        )
        gen, sampling = self._sampling(
            options.variants, options.seed, options.temperature, max_tokens, spec.single_line
        )
        params |= sampling | {"max_tokens": max_tokens, "policy": self._policy()}
        facts = Facts.from_products([product], extra=options.keywords)
        variables = {
            "task": task,
            "product": product,
            "description_chars": DESCRIPTION_CHARS,
            "max_words": prompt_limit(params.get("max_words")),
            "max_chars": prompt_limit(params.get("max_chars")),
            "tone": options.tone,
            "length": options.length,
            "keywords": options.keywords,
        }
        return self._drafts(
            task, [product], language, params, gen, facts, variables, options.variants,
            keywords=list(options.keywords), topic_check=spec.topic_check,
        )  # fmt: skip

    def _plan_headline(
        self,
        products: list[Product],
        interests: list[str],
        req: HeadlineRequest,
        language: str | None = None,
    ) -> list[Draft]:
        task = "headline"
        spec = SPECS[task]
        language = self._language(language, products)
        interests = distinct_interests(interests, [p.title for p in products])
        params: dict[str, Any] = {
            "language": language,
            "variants": req.variants,
            "interests": interests,
        }
        # The interests are the user's own history (products they viewed), not ones the
        # request gave: the fallback headline says "viewed" only then (part of the key).
        viewed = bool(req.user_id) and not req.interests and bool(interests)
        if viewed:
            params["viewed"] = True
        if language == "zh":
            params["max_chars"] = req.max_chars or spec.max_chars
        else:
            params["max_words"] = req.max_words or spec.max_words
        max_tokens = token_budget(params.get("max_words"), params.get("max_chars"))
        gen, sampling = self._sampling(
            req.variants, req.seed, req.temperature, max_tokens, spec.single_line
        )
        params |= sampling | {"max_tokens": max_tokens, "policy": self._policy()}
        facts = Facts.from_products(products, extra=interests)
        variables = {
            "task": task,
            "products": products,
            "interests": interests,
            "categories": distinct_interests([p.category for p in products if p.category]),
            "max_words": prompt_limit(params.get("max_words")),
            "max_chars": prompt_limit(params.get("max_chars")),
            "viewed": viewed,
        }
        return self._drafts(
            task, products, language, params, gen, facts, variables, req.variants,
            keywords=[], topic_check=False,
            titles=[p.title for p in products] + list(interests),
            categories=theme_categories(products),
        )  # fmt: skip

    def _drafts(
        self,
        task: str,
        products: list[Product],
        language: str,
        params: dict[str, Any],
        gen: GenParams,
        facts: Facts,
        variables: dict[str, Any],
        variants: int,
        **checks: Any,
    ) -> list[Draft]:
        """One draft per variant of a planned request; the template family, the limits and
        each variant's cache key follow from task, language and params. `checks`: the
        task's own check inputs (keywords, topic_check, a headline's titles/categories)."""
        template, version, versions = self._template_family(task, language)
        ids = [p.id for p in products]
        return [
            Draft(
                task=task,
                products=products,
                language=language,
                params=params,
                variant=v,
                key=request_key(task, ids, params, self.llm.model_id, version, v),
                facts=facts,
                limits=self._limits(task, language, params),
                variables=variables,
                gen=gen,
                template=template,
                template_version=version,
                templates=versions,
                **checks,
            )  # fmt: skip
            for v in range(variants)
        ]

    # -- running ----------------------------------------------------------------------
    def _messages(self, d: Draft) -> list[Message]:
        """System rules, the worked example (ask, answer), then the task. A retry is the
        same prompt with the task restated strictly: it carries the NAMES of the failed
        checks only, never the rejected text or what it said."""
        lang = d.language
        system = self.prompts.render(f"copy_system.{lang}", **d.variables).text
        example = f"copy_example.{lang}"
        ask = self.prompts.render(example, **d.variables, part="ask").text
        answer = self.prompts.render(example, **d.variables, part="answer").text
        if d.attempts == 0:
            user = self.prompts.render(d.template, **d.variables).text
        else:
            failures = sorted({c.name for c in d.failed})
            user = self.prompts.render(f"copy_retry.{lang}", **d.variables, failures=failures).text
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": ask},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": user},
        ]

    def _produce(self, drafts: list[Draft]) -> None:
        """Generate, check, and retry the failures; one generate call per round and
        sampling setting."""
        pending = list(drafts)
        rounds = 1 + max(self.settings.copy_max_retries, 0)
        for attempt in range(rounds):
            if not pending:
                return
            groups: dict[GenParams, list[Draft]] = {}
            for d in pending:
                d.prompt = self._messages(d)
                gen = d.gen
                # A retry stays greedy: sampled retries (temperature 0.7, tried) served texts
                # the checks pass but a reader rejects ("富含铁质 … 绝对可以带来健康益处",
                # "适合居住"). A sampled request gets a fresh seed per retry.
                if attempt and gen.seed is not None:
                    gen = replace(gen, seed=gen.seed + 1000 * attempt)
                groups.setdefault(gen, []).append(d)
            for gen, group in groups.items():
                first = group[0]
                tags = {
                    "task": first.task,
                    "template": first.template,
                    "template_version": first.template_version,
                    "attempt": attempt + 1,
                }
                t0 = time.perf_counter()
                with log_context(**tags):
                    outs = self.llm.generate([d.prompt for d in group], gen)
                dt = time.perf_counter() - t0
                for d, g in zip(group, outs, strict=True):
                    d.attempts = attempt + 1
                    d.raw = g.text
                    clean = clean_output(g.text, single_line=d.limits.single_line)
                    d.text = fit_sentences(drop_repeated_sentences(clean), d.language, d.limits)
                    # Everything the prompt says (system rules, example, task, every
                    # retry's rules) minus the data: what an echo would copy.
                    grams = echo_grams(
                        [m["content"] for m in d.prompt] + [self._retry_text(d)], d.facts
                    )
                    d.model_id, d.backend = g.model_id, g.backend
                    d.latency_s += dt
                    d.prompt_tokens += g.prompt_tokens
                    d.completion_tokens += g.completion_tokens
                    d.checks = run_checks(
                        d.text,
                        d.facts,
                        language=d.language,
                        limits=d.limits,
                        banned=self.settings.banned_claims,
                        topic=d.topic_check,
                        keywords=d.keywords,
                        claims=self.settings.unsupported_claims,
                        prompt_grams=grams,
                        titles=d.titles,
                        categories=d.categories,
                    )
                    # Cut off at the token limit, and still ending where the model stopped
                    # (not trimmed back to whole sentences).
                    cut = g.finish_reason == "length" and clean.endswith(d.text.strip()[-40:])
                    if cut and not d.limits.single_line:
                        d.checks.append(
                            CheckResult(
                                "length",
                                False,
                                "the text was cut off at the token limit",
                                ("cut off",),
                            )  # fmt: skip
                        )
                    if d.failed:
                        d.history.append({"text": d.text, "failed": [c.name for c in d.failed]})
            pending = [d for d in pending if d.failed]
        for d in pending:
            if d.task == "headline":
                self._headline_fallback(d)

    def _headline_fallback(self, d: Draft) -> None:
        """Every attempt failed ("Kitchen, Cooking, Cooking"): a headline built from the
        data alone (`copy_headline_fallback.<lang>`), served only if it passes every check
        itself. The first of `_fallback_lines` that passes: the shopper's most recent
        interest (shortened at a boundary until it fits) with what the set shares, the
        interest alone, an older interest, then the set's shared tag or categories."""
        for text, cited in self._fallback_lines(d):
            text = clean_output(text, single_line=True)
            # The interest the line cites is its reason ("Because you viewed the Santoku
            # Knife"), not a copied title: the theme check skips it, and still rejects a
            # line that copies an item's title or only lists categories.
            titles = [t for t in d.titles if cited is None or _key(t) != _key(cited)]
            checks = run_checks(
                text, d.facts, language=d.language, limits=d.limits,
                banned=self.settings.banned_claims, topic=False,
                claims=self.settings.unsupported_claims, titles=titles,
                categories=d.categories,
            )  # fmt: skip
            if all(c.ok for c in checks):
                d.history.append({"text": d.text, "failed": [c.name for c in d.failed]})
                d.text, d.raw, d.checks, d.fallback = text, text, checks, True
                return

    def _fallback_lines(self, d: Draft) -> list[tuple[str, str | None]]:
        """The fallback headline's candidates, best first: (text, the interest it cites).
        Only data goes in: interest titles, the set's shared tag, its categories (in
        Chinese for a Chinese headline)."""
        cats = d.variables.get("categories") or []
        if d.language == "zh":
            cats = [ZH_CATEGORY.get(c.lower(), c) for c in cats]
        tag = shared_tag(d.products, d.language)
        label = tag or (cats[0] if len(cats) == 1 else None)
        name = f"copy_headline_fallback.{d.language}"

        def line(interest: str | None, label: str | None) -> str:
            return self.prompts.render(
                name, interest=interest, viewed=bool(d.variables.get("viewed")),
                label=label, tag=tag, categories=cats,
            ).text  # fmt: skip

        out: list[tuple[str, str | None]] = []
        for interest in (d.variables.get("interests") or [])[:INTEREST_ITEMS]:
            forms = short_titles(interest)
            if label:
                out += [(line(f, label), interest) for f in forms]
            out += [(line(f, None), interest) for f in forms]
        if tag or cats:
            out.append((line(None, None), None))
        return out

    def _retry_text(self, d: Draft) -> str:
        """Every stricter rule a retry could add (all checks failed): for the echo check."""
        names = ["numbers", "claims", "length", "language", "format", "topic", "keywords", "theme"]
        return self.prompts.render(f"copy_retry.{d.language}", **d.variables, failures=names).text

    def _row(self, d: Draft, job_id: int | None) -> CopyRow:
        failed = [c for c in d.failed]
        never = any(c.name in NEVER_SERVED for c in failed)
        refused = bool(failed) and (self.settings.copy_on_fail == "refuse" or never)
        note = ""
        if failed:
            verb = "refused" if refused else "flagged"
            note = f"{verb}: " + "; ".join(c.detail for c in failed)
        meta: dict[str, Any] = {
            "refused": refused,
            "templates": d.templates,
            "latency_s": round(d.latency_s, 3),
            "prompt_tokens": d.prompt_tokens,
            "completion_tokens": d.completion_tokens,
        }
        if d.raw.strip() != d.text:
            meta["raw"] = d.raw
        if d.fallback:
            meta["fallback"] = "copy_headline_fallback"
        if len(d.history) > (1 if failed else 0):
            meta["failed_attempts"] = d.history[:-1] if failed else d.history
        return CopyRow(
            request_key=d.key,
            task=d.task,
            product_id=d.products[0].id if d.task != "headline" else None,
            product_ids=[p.id for p in d.products],
            params=d.params,
            language=d.language,
            variant=d.variant,
            text=d.text,
            model_id=d.model_id or self.llm.model_id,
            backend=d.backend or self.llm.backend,
            template=d.template,
            template_version=d.template_version,
            prompt=canonical_json(d.prompt),
            checks={c.name: c.as_dict() for c in d.checks},
            failed_checks=[c.name for c in failed],
            passed=not failed,
            attempts=d.attempts,
            status="rejected" if refused else "draft",
            note=note,
            meta=meta,
            job_id=job_id,
        )

    def _run(
        self,
        drafts: list[Draft],
        *,
        regenerate: bool = False,
        job_id: int | None = None,
        session: Session | None = None,
    ) -> list[CopyResult]:
        """Results in the order of drafts: stored ones reused, the rest produced and stored."""
        cached = {} if regenerate else self.store.find_many([d.key for d in drafts])
        fresh = [d for d in drafts if d.key not in cached]
        if fresh:
            self._produce(fresh)
            rows = self.store.add([self._row(d, job_id) for d in fresh], session=session)
            made = {d.key: to_result(r) for d, r in zip(fresh, rows, strict=True)}
        else:
            made = {}
        return [
            made[d.key] if d.key in made else to_result(cached[d.key], cached=True) for d in drafts
        ]


__all__ = ["LANGUAGES", "CopyWriter", "Draft"]
