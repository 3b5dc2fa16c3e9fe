"""One recommendation request, top to bottom: retrieve → rerank → (explain) → respond.

A failed or slow LLM never fails a recommendation: the shortlist order is served and the
response says it is degraded and why.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from service.catalog.models import Product
from service.recsmith import Recsmith
from service.retrieval.filters import Filters
from service.retrieval.retriever import Candidate, RetrievalRequest


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


def recommend(
    rs: Recsmith,
    user_id: str | None = None,
    history: list[str] | None = None,
    query: str | None = None,
    k: int = 10,
    filters: Filters | None = None,
    rerank: str = "none",
    shortlist: int | None = None,
) -> Recommendation:
    timings: dict[str, float] = {}
    n_short = max(shortlist or rs.settings.shortlist_size, k)
    t0 = time.perf_counter()
    req = RetrievalRequest(
        user_id=user_id, history=history or [], query=query, k=n_short, filters=filters or Filters()
    )
    cands: list[Candidate] = rs.candidates(req)
    timings["retrieve"] = (time.perf_counter() - t0) * 1000
    products: dict[str, Product] = rs.store.get_products([c.product_id for c in cands])
    stages = ["retrieve"]

    order = [(c.product_id, c.score) for c in cands]
    result = None
    if rerank != "none" and len(cands) > 1:
        from service.ranking.base import UserContext
        from service.ranking.factory import get_reranker

        t1 = time.perf_counter()
        hist_ids = [pid for pid, _ in rs.history(user_id)][-10:] if user_id else []
        hist_ids += (history or [])[-10:]
        hist_products = rs.store.get_products(hist_ids)
        ctx = UserContext(
            history=[hist_products[i] for i in hist_ids if i in hist_products], query=query
        )
        try:
            # Loaded lazily inside rank(): a model that fails to load degrades the answer.
            reranker = get_reranker(rerank, lambda: rs.reranker_llm(rerank))
            result = reranker.rank(ctx, cands, products)
        except Exception as e:  # noqa: BLE001 - degrade, never fail the request
            from service.ranking.base import retrieval_order

            result = retrieval_order(cands, rerank, reason=f"{type(e).__name__}: {e}")
        order = result.order
        timings["rerank"] = (time.perf_counter() - t1) * 1000
        stages.append(f"rerank:{rerank}")

    by_id = {c.product_id: c for c in cands}
    items = []
    for pid, score in order[:k]:
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
        degraded_reason=result.reason if result else None,
        rationale=result.rationale if result else None,
        model_id=result.model_id if result else None,
        template=result.template if result else None,
        template_version=result.template_version if result else None,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
    )
