"""One recommendation request, top to bottom: retrieve → rerank → (explain) → respond.

A failed or slow LLM never fails a recommendation: the shortlist order is served and the
response says it is degraded and why (a fixed phrase; the exception goes to the log).
Retrieval (`shortlist`) reads the indexes; the model stage (`rank_shortlist`) does not, so
the API holds the index read lock for the first only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from service.catalog.models import Product
from service.recsmith import Recsmith
from service.retrieval.filters import Filters
from service.retrieval.retriever import Candidate, RetrievalRequest

logger = logging.getLogger(__name__)


def public_reason(stage: str, raw: str | None) -> str:
    """A fixed phrase for a failed model stage ("rerank: timed out"). Exception text can
    hold URLs, paths and prompt fragments: it goes to the log, never to the client."""
    text = (raw or "").lower()
    if "timeout" in text or "timed out" in text or "budget" in text:
        return f"{stage}: timed out"
    if "unparseable" in text:
        return f"{stage}: unusable model output"
    return f"{stage}: model unavailable"


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Shortlist:
    """What retrieval found, with everything the rerank needs: built under the index read
    lock, used after it is released (the model stage must not hold back index writers)."""

    candidates: list[Candidate]
    products: dict[str, Product]
    context: Any  # service.ranking.base.UserContext
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
    """Retrieval: the only part that reads the indexes."""
    from service.ranking.base import UserContext

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


def rank_shortlist(
    rs: Recsmith,
    sl: Shortlist,
    rerank: str = "none",
    timeout_s: float | None = None,
) -> Recommendation:
    """The model stage, within `timeout_s` (settings.rerank_timeout_s when None): past it
    the shortlist order is served, degraded, and the model call is abandoned in its worker
    thread. Needs no index lock."""
    from service.ranking.base import retrieval_order
    from service.ranking.common import RerankTimeout, call_with_budget

    cands, products = sl.candidates, sl.products
    timings = dict(sl.timings_ms)
    stages = ["retrieve"]
    order = [(c.product_id, c.score) for c in cands]
    result = None
    if rerank != "none" and len(cands) > 1:
        from service.ranking.factory import get_reranker

        budget = rs.settings.rerank_timeout_s if timeout_s is None else timeout_s
        t1 = time.perf_counter()
        try:
            # Loaded lazily inside rank(): a model that fails to load degrades the answer.
            reranker = get_reranker(rerank, lambda: rs.reranker_llm(rerank), timeout_s=budget)
            # The reranker keeps its own deadline per model call; this outer one also
            # bounds whatever runs around them (a slow load, a custom reranker).
            result = call_with_budget(lambda: reranker.rank(sl.context, cands, products),
                                      budget + 0.5)  # fmt: skip
        except RerankTimeout as e:
            result = retrieval_order(cands, rerank, reason=f"RerankTimeout: {e}")
        except Exception as e:  # noqa: BLE001 - degrade, never fail the request
            result = retrieval_order(cands, rerank, reason=f"{type(e).__name__}: {e}")
        if result.degraded:
            # The raw reason (URLs, paths, model text) is for the log; clients get a phrase.
            logger.warning("rerank %s degraded: %s", rerank, result.reason)
            result.reason = public_reason("rerank", result.reason)
        order = result.order
        timings["rerank"] = (time.perf_counter() - t1) * 1000
        stages.append(f"rerank:{rerank}")

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
        degraded=bool(result and result.degraded),
        degraded_reason=result.reason if result and result.degraded else None,
        rationale=result.rationale if result else None,
        model_id=result.model_id if result else None,
        template=result.template if result else None,
        template_version=result.template_version if result else None,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
    )


def recommend(
    rs: Recsmith,
    user_id: str | None = None,
    history: list[str] | None = None,
    query: str | None = None,
    k: int = 10,
    filters: Filters | None = None,
    rerank: str = "none",
    shortlist_size: int | None = None,
    timeout_s: float | None = None,
) -> Recommendation:
    sl = shortlist(rs, user_id, history, query, k, filters, shortlist_size)
    return rank_shortlist(rs, sl, rerank, timeout_s)
