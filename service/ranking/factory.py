"""Rerankers by name: "none" (retrieval order), "verbalizer" (LlamaRec), "reasoning"
(generated listwise ranking with reasons)."""

from __future__ import annotations

import time
from typing import Any

from service.catalog.models import Product
from service.llm.base import LLM
from service.llm.factory import get_llm
from service.ranking.base import RankResult, Reranker, UserContext, retrieval_order
from service.ranking.common import dedupe
from service.ranking.reasoning import ReasoningReranker
from service.ranking.verbalizer import VerbalizerReranker
from service.retrieval.retriever import Candidate
from service.vocab import RerankMode

RERANKERS = tuple(m.value for m in RerankMode)


class NoRerank(Reranker):
    """The retrieval order as is: the baseline and the no-model configuration."""

    name = "none"

    def rank(
        self, user: UserContext, candidates: list[Candidate], products: dict[str, Product]
    ) -> RankResult:
        t0 = time.perf_counter()
        result = retrieval_order(dedupe(candidates), self.name)
        result.model_id = result.template = result.template_version = None  # no model, no prompt
        result.latency_s = time.perf_counter() - t0
        return result


def get_reranker(name: str = "none", llm: LLM | None = None, **opts: Any) -> Reranker:
    """A reranker by name. Without `llm` the configured backend (service.llm.factory) is
    loaded on the first `rank` call, so a model that will not load degrades that call
    instead of failing here. Options go to the reranker (window, passes, seed, timeout_s, …);
    unknown names or options raise ValueError/TypeError (configuration errors, not model
    trouble)."""
    if name == RerankMode.none:
        if opts:
            raise TypeError(f"the 'none' reranker takes no options, got {sorted(opts)}")
        return NoRerank()
    source: Any = llm if llm is not None else _default_llm
    if name == RerankMode.verbalizer:
        return VerbalizerReranker(source, **opts)
    if name == RerankMode.reasoning:
        return ReasoningReranker(source, **opts)
    raise ValueError(f"unknown reranker {name!r}; choose one of {', '.join(RERANKERS)}")


def _default_llm() -> LLM:
    return get_llm(role="ranker")
