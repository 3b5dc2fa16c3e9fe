"""The recommendation stages: retrieve (`shortlist`) → rerank (`rank_shortlist`) → explain
(`source_reason`). service/application.py runs them for one request, with the headline.

A failed or slow LLM never fails a recommendation: the shortlist order is served and the
response says it is degraded and why (a fixed phrase; the exception goes to the log).
Retrieval (`shortlist`) reads the indexes; the model stage (`rank_shortlist`) does not, so
the API holds the index read lock for the first only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from service.catalog.models import Product
from service.llm.base import LLM
from service.ranking.base import UserContext, retrieval_order
from service.ranking.common import RerankTimeout, call_with_budget
from service.ranking.factory import get_reranker
from service.recsmith import Recsmith
from service.retrieval.filters import Filters
from service.retrieval.retriever import Candidate, RetrievalRequest
from service.vocab import RerankMode

logger = logging.getLogger(__name__)


def public_reason(stage: str, raw: str | None) -> str:
    """A fixed phrase for a failed model stage ("rerank: timed out"). Exception text can
    hold URLs, paths and prompt fragments: it goes to the log, never to the client."""
    text = (raw or "").lower()
    # The assistant's own verdicts on what the model wrote (no exception text in them).
    if text.startswith("language:"):
        return f"{stage}: not in the shopper's language"
    if text.startswith("empty:"):
        return f"{stage}: nothing the model wrote passed the checks"
    if "timeout" in text or "timed out" in text or "budget" in text:
        return f"{stage}: timed out"
    if "unparseable" in text:
        return f"{stage}: unusable model output"
    return f"{stage}: model unavailable"


# Why an item is on the list when no model wrote a reason: the retrieval source that found
# it. Shown to shoppers, not a prompt.
SOURCE_REASONS = {
    "dense_history": "similar to items you looked at",
    "co_interaction": "often chosen together with items you looked at",
    "item_knn": "often picked right after items like the ones you looked at",
    "sequential": "what shoppers like you picked next",
    "dense_query": "matches what you asked for",
    "lexical": "matches the words you searched for",
    "popularity": "popular with other shoppers",
}


def source_reason(sources: dict[str, float]) -> str | None:
    # The strongest source first: a history match says more than popularity.
    for key in SOURCE_REASONS:
        if key in sources:
            return SOURCE_REASONS[key]
    return None


@dataclass
class RecommendedItem:
    product_id: str
    title: str
    category: str
    price: float | None
    currency: str
    score: float
    retrieval_score: float
    sources: dict[str, float]
    why: str | None = None
    fit: float | None = None  # how well it fits the headline, when one was written


@dataclass
class ListHeadline:
    """The headline written for a list, and each item's fit to it."""

    text: str
    model_id: str | None = None
    template: str | None = None
    template_version: str | None = None
    flagged: bool = False
    fit: dict[str, float] = field(default_factory=dict)


@dataclass
class Recommendation:
    items: list[RecommendedItem]
    stages: list[str]
    rerank: str
    degraded: bool = False
    degraded_reason: str | None = None
    rationale: str | None = None
    model_id: str | None = None
    template: str | None = None
    template_version: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    headline: ListHeadline | None = None
    degraded_stages: list[str] = field(default_factory=list)  # e.g. ["rerank", "headline"]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Shortlist:
    """What retrieval found, with everything the rerank needs: built under the index read
    lock, used after it is released (the model stage must not hold back index writers)."""

    candidates: list[Candidate]
    products: dict[str, Product]
    context: UserContext
    k: int
    timings_ms: dict[str, float] = field(default_factory=dict)


def shortlist(
    rs: Recsmith,
    user_id: str | None = None,
    history: list[str] | None = None,
    query: str | None = None,
    k: int = 10,
    filters: Filters | None = None,
    size: int | None = None,
) -> Shortlist:
    """Retrieval: the only part that reads the indexes (unknown ids: NotFound)."""
    n_short = max(size or rs.settings.shortlist_size, k)
    t0 = time.perf_counter()
    req = RetrievalRequest(
        user_id=user_id, history=history or [], query=query, k=n_short, filters=filters or Filters()
    )
    cands: list[Candidate] = rs.candidates(req)
    products: dict[str, Product] = rs.store.get_products([c.product_id for c in cands])
    hist_ids = [pid for pid, _ in rs.history(user_id)][-10:] if user_id else []
    hist_ids += (history or [])[-10:]
    hist_products = rs.store.get_products(hist_ids)
    ctx = UserContext(
        history=[hist_products[i] for i in hist_ids if i in hist_products], query=query
    )
    ms = (time.perf_counter() - t0) * 1000
    return Shortlist(cands, products, ctx, k, {"retrieve": ms})


def default_ranker_llm(rs: Recsmith, rerank: str) -> LLM:
    """The verbalizer's model is the configured one with the LoRA adapter when one is
    saved (the adapter was tuned on the verbalizer's prompt only); others use the base."""
    base = rs.llm("ranker")
    return rs.artefacts.ranker_llm(base) if rerank == RerankMode.verbalizer else base


def rank_shortlist(
    rs: Recsmith,
    sl: Shortlist,
    rerank: str = "none",
    timeout_s: float | None = None,
    llm: Callable[[str], LLM] | None = None,
) -> Recommendation:
    """The model stage, within `timeout_s` (settings.rerank_timeout_s when None): past it
    the shortlist order is served, degraded, and the model call is abandoned in its worker
    thread. Needs no index lock. `llm(rerank)` gives the model (default_ranker_llm)."""
    model = llm or (lambda mode: default_ranker_llm(rs, mode))
    cands, products = sl.candidates, sl.products
    timings = dict(sl.timings_ms)
    stages = ["retrieve"]
    order = [(c.product_id, c.score) for c in cands]
    result = None
    degraded_stages: list[str] = []
    if rerank != RerankMode.none and len(cands) > 1:
        budget = rs.settings.rerank_timeout_s if timeout_s is None else timeout_s
        t1 = time.perf_counter()
        try:
            # Loaded lazily inside rank(): a model that fails to load degrades the answer.
            opts: dict[str, Any] = {}
            if rerank == RerankMode.verbalizer:  # blended with its shortlist when fitted
                blend, blend_status = rs.artefacts.rerank_blend()
                opts["blend"] = blend
                if blend_status.degraded:
                    degraded_stages.append("rerank_blend")
            reranker = get_reranker(rerank, lambda: model(rerank), timeout_s=budget, **opts)
            # The reranker keeps its own deadline per model call; this outer one also
            # bounds whatever runs around them (a slow load, a custom reranker).
            result = call_with_budget(lambda: reranker.rank(sl.context, cands, products),
                                      budget + 0.5)  # fmt: skip
        except RerankTimeout as e:
            result = retrieval_order(cands, rerank, reason=f"RerankTimeout: {e}")
        except Exception as e:  # noqa: BLE001 - degrade, never fail the request
            result = retrieval_order(cands, rerank, reason=f"{type(e).__name__}: {e}")
        if result.degraded:
            degraded_stages.append("rerank")
            # The raw reason (URLs, paths, model text) is for the log; clients get a phrase.
            logger.warning("rerank %s degraded: %s", rerank, result.reason)
            result.reason = public_reason("rerank", result.reason)
        order = result.order
        timings["rerank"] = (time.perf_counter() - t1) * 1000
        stages.append(f"rerank:{rerank}")

    reasons = [result.reason] if result and result.degraded and result.reason else []
    if "rerank_blend" in degraded_stages:
        reasons.append("rerank: the LLM's own order (the fitted blend is unusable)")
    fusion = rs.fusion_status
    if fusion is not None and fusion.degraded:
        # A corrupt or mismatched fusion artefact: the default source weights ranked this.
        degraded_stages.append("fusion")
        reasons.append("retrieval: default fusion weights (the fitted ones are unusable)")

    by_id = {c.product_id: c for c in cands}
    items = []
    for pid, score in order[: sl.k]:
        p, c = products.get(pid), by_id.get(pid)
        if p is None or c is None:  # never serve an id the catalogue does not hold
            continue
        items.append(
            RecommendedItem(
                pid,
                p.title,
                p.category,
                p.price,
                p.currency,
                float(score),
                c.score,
                c.sources,
                (result.reasons.get(pid) if result else None),
            )
        )
    return Recommendation(
        items=items,
        stages=stages,
        rerank=rerank,
        degraded=bool(degraded_stages),
        degraded_reason="; ".join(reasons) or None,
        rationale=result.rationale if result else None,
        model_id=result.model_id if result else None,
        template=result.template if result else None,
        template_version=result.template_version if result else None,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
        degraded_stages=degraded_stages,
    )
