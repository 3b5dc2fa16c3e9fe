"""LangChain adapters over recsmith, for users who compose their own chains.

- `RecsmithRetriever`: our hybrid retriever (dense + lexical + co-interaction, business
  filters inside) as a `BaseRetriever`; returns one `Document` per product with its data in
  `metadata`.
- `RecsmithChatModel`: any recsmith `LLM` backend (in-process transformers, vLLM) as a
  `BaseChatModel`, with `_generate` and `_stream`; the model id is in `response_metadata`.
- `turn_prompt`: a runnable that renders the assistant's own Jinja templates
  (prompts/assistant_*.j2) into chat messages, so product text is fenced the same way.

Example:
    chain = (
        {"products": RecsmithRetriever(rs=rs, k=4), "question": RunnablePassthrough()}
        | turn_prompt
        | RecsmithChatModel(llm=rs.llm())
        | StrOutputParser()
    )
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from pydantic import ConfigDict, Field

from service.catalog.models import Product
from service.copy.checks import cjk_ratio
from service.llm.base import LLM, GenParams, Message
from service.prompts import SENTENCE_STOP, clip, render
from service.retrieval.filters import Filters
from service.retrieval.retriever import RetrievalRequest

SYSTEM_TEMPLATE = "assistant_system"
TURN_TEMPLATE = "assistant_turn"


# -- retriever ---------------------------------------------------------------------------
def product_document(p: Product, score: float = 0.0, sources: dict | None = None) -> Document:
    return Document(
        id=p.id,
        page_content=p.embedding_text(),
        metadata={
            "id": p.id,
            "title": p.title,
            "price": p.price,
            "currency": p.currency,
            "category": p.category,
            "brand": p.brand,
            "in_stock": p.in_stock,
            "score": score,
            "sources": dict(sources or {}),
            "product": p.model_dump(),
        },
    )


def document_product(doc: Document) -> Product:
    return Product(**doc.metadata["product"])


class RecsmithRetriever(BaseRetriever):
    """Products for a query, best first, with recsmith's filters applied inside retrieval."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    rs: Any  # service.recsmith.Recsmith (Any: keeps the heavy import lazy)
    k: int = 5
    filters: Filters = Field(default_factory=Filters)
    user_id: str | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        req = RetrievalRequest(query=query, k=self.k, filters=self.filters, user_id=self.user_id)
        cands = self.rs.candidates(req)
        products = self.rs.store.get_products([c.product_id for c in cands])
        return [
            product_document(products[c.product_id], c.score, c.sources)
            for c in cands
            if c.product_id in products  # never hand out an id the catalogue lacks
        ]


# -- chat model --------------------------------------------------------------------------
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def to_messages(messages: list[BaseMessage]) -> list[Message]:
    out: list[Message] = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else m.text
        out.append({"role": _ROLES.get(m.type, "user"), "content": content})
    return out


class RecsmithChatModel(BaseChatModel):
    """A recsmith LLM backend as a LangChain chat model (greedy by default)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: LLM
    max_tokens: int = 80
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return f"recsmith-{self.llm.backend}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_id": self.llm.model_id, "backend": self.llm.backend}

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> GenParams:
        return GenParams(
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            stop=tuple(stop or self.stop),
            seed=kwargs.get("seed"),
            repetition_penalty=float(kwargs.get("repetition_penalty", self.repetition_penalty)),
        )

    def _meta(self, finish_reason: str = "") -> dict[str, Any]:
        return {
            "model_id": self.llm.model_id,
            "model_name": self.llm.model_id,
            "backend": self.llm.backend,
            "finish_reason": finish_reason,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        g = self.llm.generate([to_messages(messages)], self._params(stop, kwargs))[0]
        msg = AIMessage(
            content=g.text,
            response_metadata=self._meta(g.finish_reason),
            usage_metadata={
                "input_tokens": g.prompt_tokens,
                "output_tokens": g.completion_tokens,
                "total_tokens": g.prompt_tokens + g.completion_tokens,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=msg)], llm_output=self._meta())

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece in self.llm.stream(to_messages(messages), self._params(stop, kwargs)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        # The last chunk carries provenance (merged into the aggregated message).
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata=self._meta("stop"))
        )


# -- the assistant's prompt as a runnable ------------------------------------------------
def _as_product(x: Product | Document) -> Product:
    return x if isinstance(x, Product) else document_product(x)


# Description characters per product in the chat prompt: enough to say what it is and why
# it fits, short enough that the first token comes fast on a CPU (the prompt's tail after
# the cached system prompt is what a turn waits for: ~70 tokens/s prefill on 2 cores).
# Chinese text costs ~0.8 tokens a character against ~0.25 for English: fewer characters.
DESCRIPTION_CHARS = 100
DESCRIPTION_CHARS_CJK = 45


def question_language(text: str) -> str:
    """The shopper's language: 'zh' for a mostly Chinese question, else 'en'."""
    return "zh" if cjk_ratio(text) > 0.3 else "en"


# How far the budget stretches so the first sentence ends whole: a description cut
# mid-clause ("…arrives seasoned with") was copied into the answer as it stood.
STRETCH = 1.6


def _description_chars(p: Product) -> int:
    text = " ".join((p.description or "").split())
    base = DESCRIPTION_CHARS_CJK if cjk_ratio(text) > 0.3 else DESCRIPTION_CHARS
    first = SENTENCE_STOP.search(text)
    if len(text) > base and first is not None and base < first.end() <= base * STRETCH:
        return first.end()
    return base


def description_shown(p: Product) -> str:
    """The description as the turn's prompt shows it (before fencing)."""
    return clip(p.description or "", _description_chars(p))


def turn_messages(inputs: dict[str, Any]) -> list[BaseMessage]:
    """{"question", "products": [Product | Document], "context": [str]} → chat messages.

    Renders prompts/assistant_system.j2 and prompts/assistant_turn.j2; the template names
    and versions are in each message's `additional_kwargs` for provenance.
    """
    products = [_as_product(p) for p in inputs.get("products") or []]
    system = render(SYSTEM_TEMPLATE)
    turn = render(
        TURN_TEMPLATE,
        question=inputs["question"],
        products=[
            {"label": i + 1, "p": p, "chars": _description_chars(p)} for i, p in enumerate(products)
        ],
        context=list(inputs.get("context") or []),
        language=inputs.get("language") or question_language(inputs["question"]),
        description_chars=DESCRIPTION_CHARS,
        retry=bool(inputs.get("retry")),
    )
    return [
        SystemMessage(system.text, additional_kwargs={"template": system.template,
                                                      "template_version": system.version}),
        HumanMessage(turn.text, additional_kwargs={"template": turn.template,
                                                   "template_version": turn.version}),
    ]  # fmt: skip


turn_prompt = RunnableLambda(turn_messages, name="recsmith_turn_prompt")
