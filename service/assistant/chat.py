"""The chat shopping assistant: one turn = query → retrieve (→ rerank) → answer → check → store.

Public API (what the HTTP route calls):

    assistant = Assistant(rs)                       # rs: service.recsmith.Recsmith
    events = assistant.stream(message, conversation_id=None, filters=None, user_id=None)
    for ev in events: ...                          # {"type": "token", "text": …} …, then
                                                   # one {"type": "final", …} (see `final`)
    assistant.ask(...) -> the final event          # the same turn, not streamed
    assistant.conversation(conversation_id) -> {"id", …, "messages": [...]}

`stream` does the cheap, failing-fast work before returning the iterator: it validates the
message, raises `ConversationNotFound` (→ 404) for an unknown conversation id and
`NotFound` for an unknown user/product in filters, retrieves, and stores the user message.
All model work happens while the iterator is consumed, and a model failure never raises:
the final event is `degraded` with a templated answer and grounded product cards.

How much of this is LangChain: the generation step is an LCEL chain
(`turn_prompt | RecsmithChatModel | StrOutputParser`) and retrieval goes through
`RecsmithRetriever`, the same pieces users compose. The rest is plain Python on purpose:
the query rules need the previous turn's stored state, the relaxation ladder needs to see
empty results, and the grounding step needs the turn's label → product map; threading these
through a chain's dicts would hide them without making anything composable.

The final event:
    {"type": "final", "conversation_id", "message_id", "answer", "products": [card…],
     "cited": [product ids cited in `answer`], "suggested": bool (cards are suggestions,
     not citations), "degraded": bool, "degraded_reason": str | None,
     "removed": [sentences dropped: orders or injected/echoed text, before they were
                 streamed; ungrounded prices, after],
     "flags": [{"kind", "text"}], "query": {"text", "follow_up", "derived"},
     "model_id", "template", "template_version"}
    card = {"id", "title", "price", "currency", "category", "in_stock", "label"}

Tokens vs answer: token texts are the model's words with invalid labels and foreign ids
already removed, and without the sentences the AnswerGuard dropped (an instruction planted
in product text, an echo of the prompt); `answer` is their concatenation, stripped, minus
the sentences removed for a price.
When the model wrote nothing usable or failed mid-stream, `answer` is the fallback text.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, TypedDict

from langchain_core.output_parsers import StrOutputParser

from service.assistant.glossary import ZH_CATEGORY, fit_words, shop_words
from service.assistant.grounding import (
    AnswerGuard,
    Checked,
    Labels,
    StreamSanitizer,
    answer_language_ok,
    check_details,
    check_prices,
    complete_from_data,
    drop_cut_copies,
    restore_titles,
    sentences,
)
from service.assistant.lc import (
    SYSTEM_TEMPLATE,
    TURN_TEMPLATE,
    RecsmithChatModel,
    RecsmithRetriever,
    description_shown,
    document_product,
    question_language,
    turn_prompt,
)
from service.assistant.query import PreviousTurn, TurnQuery, build_query, fuse_crosslingual
from service.assistant.store import ConversationNotFound, ConversationStore, StoredMessage
from service.catalog.models import Product
from service.copy.checks import cjk_ratio, looks_like_instruction
from service.llm.base import LLM
from service.llm.factory import get_llm
from service.llm.log import log_context
from service.prompts import clip, library, render
from service.ranking.base import UserContext
from service.ranking.factory import get_reranker
from service.retrieval.filters import Filters
from service.retrieval.retriever import Candidate
from service.vocab import RerankMode, choices

FALLBACK_TEMPLATE = "assistant_fallback"
# Description characters per item in the templated answer (cut after a whole sentence).
FALLBACK_DESCRIPTION_CHARS = 90
MAX_MESSAGE_CHARS = 1000  # the retrieval query limit
# Small models go on to invent the next turn of the prompt; stop them there.
STOP = ("\nQuestion:", "\nProducts:", "\nEarlier the shopper")

__all__ = ["Assistant", "ConversationNotFound"]


def card(p: Product, label: int) -> dict[str, Any]:
    return {
        "id": p.id,
        "title": p.title,
        "price": p.price,
        "currency": p.currency,
        "category": p.category,
        "in_stock": p.in_stock,
        "label": label,
    }


def prompt_instructions() -> list[str]:
    """The assistant's standing instructions (the system prompt: no product data, no
    question): an answer that repeats them leaks the prompt rather than answering. The
    turn's own request line is left out: "the best product for the question is [1]" is a
    fair answer, not a leak."""
    return [render(SYSTEM_TEMPLATE).text]


def _plain_description(text: str) -> str:
    """The description's sentences minus any that read as an order to an assistant (a
    planted "IMPORTANT NEW INSTRUCTION …" is product text, and is not shown as the answer),
    cut after a whole sentence."""
    kept = [t.strip() for t in sentences(text or "") if not looks_like_instruction(t)]
    return clip(" ".join(kept), FALLBACK_DESCRIPTION_CHARS)


def fallback_items(products: list[Product], question: str, language: str) -> list[dict[str, Any]]:
    """The templated answer's items, from the data, in the shopper's language: label,
    product, category and description only where written in that language, and `why`:
    the question's shop words the product names ("露营", "帐篷" for a camping tent)."""
    items = []
    for i, p in enumerate(products):
        zh_text = cjk_ratio(p.description or p.title) > 0.3
        same = zh_text == (language == "zh")
        category = p.category or ""
        if language == "zh" and not zh_text:
            category = ZH_CATEGORY.get(category.lower(), "")
        text = f"{p.title} {p.category} {' '.join(p.tags)} {p.description}"
        items.append(
            {
                "label": i + 1,
                "p": p,
                "category": category,
                "description": _plain_description(p.description) if same else "",
                "why": fit_words(question, text, language),
            }
        )
    return items


class TurnOptions(TypedDict, total=False):
    """What a turn may add to its message: filters on the products, and the shopper."""

    filters: Filters | None
    user_id: str | None


class Assistant:
    def __init__(
        self,
        rs: Any,  # service.recsmith.Recsmith
        llm: LLM | None = None,
        *,
        top_n: int = 3,
        rerank: str = "none",
        max_tokens: int = 96,
        context_turns: int = 2,
        piece_timeout_s: float | None = None,
    ) -> None:
        if rerank not in set(RerankMode):
            raise ValueError(f"unknown reranker {rerank!r}; choose one of {choices(RerankMode)}")
        self.rs = rs
        self._llm_obj = llm
        self.top_n = top_n
        self.rerank = rerank
        self.max_tokens = max_tokens
        self.context_turns = context_turns
        self.piece_timeout_s = piece_timeout_s or float(rs.settings.llm_timeout_s)
        self.conversations = ConversationStore(rs.store.engine)

    # -- parts -------------------------------------------------------------------------
    def llm(self) -> LLM:
        """The writer role's model (copy, chat and headlines share it)."""
        if self._llm_obj is None:
            self._llm_obj = get_llm(self.rs.settings, role="writer")
        return self._llm_obj

    def chain(self, llm: LLM):  # noqa: ANN201 - an LCEL Runnable[dict, str]
        """The generation step as LCEL: prompt (our .j2 templates) | chat model | parser.
        Repetition control as for copy: a small greedy model otherwise loops."""
        penalty = float(getattr(self.rs.settings, "writer_repetition_penalty", 1.0))
        return (
            turn_prompt
            | RecsmithChatModel(llm=llm, max_tokens=self.max_tokens, repetition_penalty=penalty)
            | (StrOutputParser())
        )

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return self.conversations.get(conversation_id)

    def _previous(self, history: list[StoredMessage]) -> PreviousTurn | None:
        last = next((m for m in reversed(history) if m.role == "assistant"), None)
        if last is None or not last.meta.get("topic"):
            return None
        ids = list(dict.fromkeys(last.cited_ids + last.product_ids))
        found = self.rs.store.get_products(ids)
        return PreviousTurn(
            topic=last.meta["topic"],
            products=[found[i] for i in ids if i in found],
            categories=list(last.meta.get("categories") or []),
        )

    def _retrieve(
        self, tq: TurnQuery, user_id: str | None, k: int
    ) -> tuple[list[Product], dict[str, float], Filters]:
        """Tries the filter attempts in order; the first with results wins."""
        used = tq.attempts[0]
        for f in tq.attempts:
            used = f
            docs = RecsmithRetriever(rs=self.rs, k=k, filters=f, user_id=user_id).invoke(tq.text)
            if tq.cross:  # a Chinese query: its English words too, fused
                en = RecsmithRetriever(rs=self.rs, k=k, filters=f, user_id=user_id).invoke(tq.cross)
                by_id = {d.metadata["id"]: d for d in en + docs}
                # "Matched" means a Chinese product names the shop word ("露营"), not that
                # BM25's bigrams found a common word ("适合", "suitable") somewhere.
                words = shop_words(tq.text)
                named = any(
                    w in f"{p.title} {p.description}"
                    for p in map(document_product, docs)
                    for w in words
                )
                order = fuse_crosslingual(
                    [(d.metadata["id"], d.metadata["sources"]) for d in docs],
                    [(d.metadata["id"], d.metadata["sources"]) for d in en],
                    matched=named if words else None,
                )
                docs = [by_id[pid] for pid in order[:k]]
            if docs:
                products = [document_product(d) for d in docs]
                return products, {d.metadata["id"]: d.metadata["score"] for d in docs}, used
        return [], {}, used

    # -- one turn ----------------------------------------------------------------------
    def stream(
        self,
        message: str,
        conversation_id: str | None = None,
        *,
        filters: Filters | None = None,
        user_id: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        message = (message or "").strip()
        if not message:
            raise ValueError("message must not be empty")
        if len(message) > MAX_MESSAGE_CHARS:
            raise ValueError(f"message longer than {MAX_MESSAGE_CHARS} characters")
        if filters is not None and type(filters) is not Filters:
            filters = Filters.model_validate(filters.model_dump())  # e.g. the API's subclass
        history: list[StoredMessage] = []
        if conversation_id:
            history = self.conversations.messages(
                conversation_id, limit=4 * self.context_turns + 2
            )  # raises ConversationNotFound
        previous = self._previous(history)
        tq = build_query(message, previous, filters)
        k = max(self.top_n * 3, 12) if self.rerank != "none" else self.top_n
        shortlist, scores, used = self._retrieve(tq, user_id, k)
        context = (
            [m.content for m in history if m.role == "user"][-self.context_turns :]
            if tq.follow_up
            else []
        )
        if conversation_id is None:
            conversation_id = self.conversations.create(user_id=user_id, title=message)
        self.conversations.add(conversation_id, "user", message)
        return self._turn(conversation_id, message, tq, used, shortlist, scores, context, previous)

    def ask(self, message: str, conversation_id: str | None = None, **kw: Any) -> dict[str, Any]:
        final: dict[str, Any] = {}
        for ev in self.stream(message, conversation_id, **kw):
            if ev["type"] == "final":
                final = ev
        return final

    def _rerank(
        self, llm: LLM, tq: TurnQuery, shortlist: list[Product], scores: dict[str, float],
        previous: PreviousTurn | None,
    ) -> tuple[list[Product], str | None]:  # fmt: skip
        """Optional LLM rerank of the shortlist; any failure keeps retrieval order."""
        if self.rerank == "none" or len(shortlist) < 2:
            return shortlist, None
        try:
            cands = [Candidate(p.id, scores.get(p.id, 0.0)) for p in shortlist]
            ctx = UserContext(history=previous.products[:5] if previous else [], query=tq.text)
            result = get_reranker(self.rerank, llm).rank(ctx, cands, {p.id: p for p in shortlist})
            by_id = {p.id: p for p in shortlist}
            order = [by_id[pid] for pid, _ in result.order if pid in by_id]
            return order or shortlist, result.reason if result.degraded else None
        except Exception as e:  # noqa: BLE001 - a rerank failure must not fail the turn
            return shortlist, f"rerank failed: {type(e).__name__}: {e}"

    def _generate(self, llm: LLM, inputs: dict[str, Any], tags: dict[str, Any]) -> Iterator[str]:
        """Runs the LCEL chain in its own thread and relays pieces.

        Why a thread: the model call, LangChain's callbacks and the llm_calls log tags all
        use context variables and the transformers backend holds a lock for the whole
        stream; a web server may resume this generator on a different worker thread each
        time, so all of that stays on one thread and only text crosses over. A stall longer
        than piece_timeout_s ends the turn (degraded); closing this generator stops the model.
        """
        q: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()
        chain = self.chain(llm)

        def produce() -> None:
            try:
                with log_context(**tags):
                    it = chain.stream(inputs)
                    try:
                        for piece in it:
                            if stop.is_set():
                                break
                            q.put(("piece", piece))
                    finally:
                        it.close()  # ends the model's stream (and releases its lock)
                q.put(("end", None))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(("error", e))

        worker = threading.Thread(target=produce, name="assistant-llm", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    kind, val = q.get(timeout=self.piece_timeout_s)
                except queue.Empty:
                    raise TimeoutError(
                        f"no output from the model for {self.piece_timeout_s:.0f} s"
                    ) from None
                if kind == "piece":
                    yield val
                elif kind == "end":
                    return
                else:
                    raise val
        finally:
            stop.set()

    def _checked(self, guard: AnswerGuard, labels: Labels, message: str) -> Checked:
        """The answer the guard let through, minus a description copied where the prompt cut
        it, sentences with a wrong price or a detail the data does not state; '' when
        nothing grounded is left."""
        cut = [
            shown
            for p in labels.products
            if (shown := description_shown(p)) != " ".join((p.description or "").split())
        ]
        completed = complete_from_data(guard.text, labels)
        titles = restore_titles(completed.answer, labels)
        copies = drop_cut_copies(titles.answer, labels, cut)
        checked = check_prices(copies.answer, labels)
        details = check_details(
            checked.answer, labels, message, self.rs.settings.unsupported_claims
        )
        answer = details.answer
        if (copies.removed or checked.removed or details.removed) and not labels.cited(answer):
            # What is left speaks of a product whose line was removed ("a cheaper one?":
            # the teapot's line had the wrong price, "it is more durable" stayed): the
            # templated answer from the data instead.
            answer = ""
        steps = (guard, completed, titles, copies, checked, details)
        return Checked(
            answer=answer,
            removed=[r for step in steps for r in step.removed],
            flags=[f for step in steps for f in step.flags],
        )

    def _retry_language(
        self, llm: LLM, inputs: dict[str, Any], labels: Labels, message: str,
        tags: dict[str, Any],
    ) -> Checked:  # fmt: skip
        """The turn again, not streamed, with the shopper's language restated."""
        san = StreamSanitizer(labels)
        guard = AnswerGuard(labels.products, prompt_instructions())
        for piece in self._generate(llm, {**inputs, "retry": True}, {**tags, "attempt": 2}):
            guard.feed(san.feed(piece))
        guard.feed(san.flush())
        guard.flush()
        return self._checked(guard, labels, message)

    def _turn(
        self,
        conversation_id: str,
        message: str,
        tq: TurnQuery,
        used: Filters,
        shortlist: list[Product],
        scores: dict[str, float],
        context: list[str],
        previous: PreviousTurn | None,
    ) -> Iterator[dict[str, Any]]:
        t0 = time.perf_counter()
        language = question_language(message)
        degraded_reason: str | None = None
        model_id: str | None = None
        template, version = TURN_TEMPLATE, library().version(TURN_TEMPLATE)
        san: StreamSanitizer | None = None
        guard: AnswerGuard | None = None
        top: list[Product] = shortlist[: self.top_n]
        labels = Labels(top)
        notes: dict[str, Any] = {}
        if top:
            try:
                llm = self.llm()
                model_id = llm.model_id
                ranked, rerank_note = self._rerank(llm, tq, shortlist, scores, previous)
                if rerank_note:
                    notes["rerank"] = rerank_note
                top = ranked[: self.top_n]
                labels = Labels(top)
                san = StreamSanitizer(labels)
                guard = AnswerGuard(top, prompt_instructions())
                inputs = {
                    "question": message,
                    "products": top,
                    "context": context,
                    "language": language,
                }
                tags = {
                    "template": template,
                    "template_version": version,
                    "system_template_version": library().version(SYSTEM_TEMPLATE),
                    "conversation_id": conversation_id,
                }
                for piece in self._generate(llm, inputs, tags):
                    text = guard.feed(san.feed(piece))
                    if text:
                        yield {"type": "token", "text": text}
                text = guard.feed(san.flush()) + guard.flush()
                if text:
                    yield {"type": "token", "text": text}
            except Exception as e:  # noqa: BLE001 - a model failure degrades, never raises
                degraded_reason = f"{type(e).__name__}: {e}"[:500]

        removed: list[str] = []
        flags: list[dict[str, Any]] = []
        answer = ""
        wrong_language = False
        if guard is not None and degraded_reason is None:
            checked = self._checked(guard, labels, message)
            answer, removed, flags = checked.answer, checked.removed, checked.flags
            if answer and not answer_language_ok(answer, labels, language):
                # Once more with the language restated (never the failed answer quoted);
                # the final answer replaces what was streamed. Still wrong: the template.
                flags.append({"kind": "language", "text": answer})
                try:
                    retry = self._retry_language(llm, inputs, labels, message, tags)
                    removed += retry.removed
                    flags += retry.flags
                    answer = retry.answer
                except Exception as e:  # noqa: BLE001 - the templated answer instead
                    flags.append({"kind": "retry_failed", "text": f"{type(e).__name__}: {e}"})
                    answer = ""
                if answer and not answer_language_ok(answer, labels, language):
                    flags.append({"kind": "language", "text": answer})
                    answer = ""
                wrong_language = not answer
        cited = labels.cited(answer) if answer else []
        if not answer:
            # No products, a failed model, or nothing usable written: the templated answer.
            reason = "llm" if degraded_reason else ("empty" if top else "none")
            if top and not degraded_reason and not wrong_language:
                flags.append({"kind": "empty_answer", "text": san.text if san else ""})
            fb = render(
                FALLBACK_TEMPLATE,
                question=message,
                products=fallback_items(top, message, language),
                reason=reason,
                language=language,
            )
            answer, template, version = fb.text, fb.template, fb.version
            if top and not degraded_reason:
                # The model ran but nothing it wrote could be served: the shopper gets the
                # templated answer, and the response says so (a UI may offer a retry).
                degraded_reason = (
                    f"language: the model did not answer in the shopper's language ({language})"
                    if wrong_language
                    else "empty: nothing the model wrote passed the answer checks"
                )
        suggested = not cited
        shown = [p for p in top if p.id in cited] if cited else top
        cards = [card(p, labels.label_of[p.id]) for p in shown]
        categories = list(used.categories)
        meta = {
            "topic": tq.text,
            "follow_up": tq.follow_up,
            "derived": tq.derived,
            "filters": used.model_dump(),
            "categories": categories,
            "shortlist": [p.id for p in top],
            "suggested": suggested,
            "removed": removed,
            "flags": flags,
            "streamed": guard.text if guard else "",
            "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
            **notes,
        }
        if degraded_reason:
            meta["degraded_reason"] = degraded_reason
        message_id = self.conversations.add(
            conversation_id,
            "assistant",
            answer,
            cited_ids=cited,
            product_ids=[c["id"] for c in cards],
            model_id=model_id,
            template=template,
            template_version=version,
            degraded=degraded_reason is not None,
            meta=meta,
        )
        yield {
            "type": "final",
            "conversation_id": conversation_id,
            "message_id": message_id,
            "answer": answer,
            "products": cards,
            "cited": cited,
            "suggested": suggested,
            "degraded": degraded_reason is not None,
            "degraded_reason": degraded_reason,
            "removed": removed,
            "flags": flags,
            "query": {"text": tq.text, "follow_up": tq.follow_up, "derived": tq.derived},
            "model_id": model_id,
            "template": template,
            "template_version": version,
            **({"rerank_note": notes["rerank"]} if "rerank" in notes else {}),
        }
