"""POST /v1/recommendations: retrieve → (rerank) → (explain, headline) → respond."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request

from service.api import metrics
from service.api.deps import V1, Index, request_id
from service.api.errors import ApiError, error_responses
from service.api.protocol import (
    HeadlineOut,
    RecommendationRequest,
    RecommendationResponse,
    RecommendedItemOut,
)
from service.llm.log import log_context
from service.ranking.common import call_with_budget
from service.recommend import Recommendation, public_reason, rank_shortlist, shortlist
from service.recsmith import Recsmith

logger = logging.getLogger("service.api")
router = APIRouter(prefix=V1, tags=["recommendations"])

# Why an item is on the list when no model wrote a reason: the retrieval source that found
# it. Shown to shoppers, not a prompt.
SOURCE_REASONS = {
    "dense_history": "similar to items you looked at",
    "co_interaction": "often chosen together with items you looked at",
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


def _check_ids(rs: Recsmith, body: RecommendationRequest) -> None:
    """Unknown ids are the caller's mistake: a 404 naming the field, not a degraded list."""
    if body.history:
        missing = [(n, p) for n, p in enumerate(body.history) if p not in rs.dense.row]
        if missing:
            raise ApiError(
                404,
                f"unknown product id(s) in history: {', '.join(p for _, p in missing[:5])}",
                fields=[(f"history[{n}]", "unknown product id") for n, _ in missing[:20]],
            )
    cold = not (body.history or (body.query and body.query.strip()))
    if body.user_id and cold and not rs.store.has_user(body.user_id):
        raise ApiError(
            404,
            f"unknown user id {body.user_id!r} (no interactions stored); "
            "send a query or history for a new user",
            fields=[("user_id", "unknown user")],
        )


def _headline(
    rs: Recsmith, body: RecommendationRequest, rec: Recommendation, request: Request
) -> HeadlineOut:
    """The copy stage writes the headline; each item gets its fit to it."""
    from service.api.routes.copy import writer_for
    from service.copy.tasks import HeadlineRequest

    user = body.user_id if body.user_id and rs.store.has_user(body.user_id) else None
    interests = [body.query.strip()[:128]] if body.query and body.query.strip() else []
    req = HeadlineRequest(
        product_ids=[i.product_id for i in rec.items][:50], user_id=user, interests=interests
    )
    result = writer_for(request, rs).headline(req)
    h = result.headline
    return HeadlineOut(
        text=h.text or "",
        model_id=h.model_id,
        template=h.template,
        template_version=h.template_version,
        flagged=not h.passed,
        fit={i.product_id: i.score for i in result.items},
    )


@router.post(
    "/recommendations",
    response_model=RecommendationResponse,
    summary="Recommend products",
    description="For a known user, an explicit history, a query, or any mix of them. The "
    "retrieval shortlist is optionally reranked by the language model; if the model fails "
    "or is slow the shortlist order is served with `degraded: true` and the reason. "
    "`stages` lists what ran; `timings_ms` how long each stage took.",
    responses=error_responses(400, 401, 404, 413, 422),
)
def recommendations(
    body: RecommendationRequest, index: Index, request: Request
) -> RecommendationResponse:
    rid = request_id(request)
    t0 = time.perf_counter()
    settings = index.rs.settings
    # The read lock covers retrieval only: a model stage holding it would make an index
    # writer wait, and every reader queue behind that writer, for as long as the model runs.
    with index.reading() as rs:
        rs.ensure_ready()
        _check_ids(rs, body)
        sl = shortlist(
            rs,
            user_id=body.user_id,
            history=body.history,
            query=body.query.strip() if body.query else None,
            k=body.k,
            filters=body.filters,
        )
    with log_context(request_id=rid, route="recommendations"):
        rec = rank_shortlist(rs, sl, body.rerank, settings.rerank_timeout_s)
    stages = list(rec.stages)
    timings = dict(rec.timings_ms)
    reasons = [rec.degraded_reason] if rec.degraded else []
    if rec.degraded:
        logger.info("recommendations degraded [request %s]: %s", rid, rec.degraded_reason)
        metrics.DEGRADED.labels("recommendations", "rerank").inc()

    headline: HeadlineOut | None = None
    if body.headline and rec.items:
        t1 = time.perf_counter()
        try:
            # In a worker thread: past the budget the list is served without the headline,
            # and the model call finishes (or fails) on its own.
            with log_context(request_id=rid, route="recommendations"):
                headline = call_with_budget(
                    lambda: _headline(rs, body, rec, request), settings.headline_timeout_s
                )
            stages.append("headline")
        except Exception as e:  # noqa: BLE001 - the list is served without it
            raw = f"{type(e).__name__}: {e}"
            logger.warning("headline failed [request %s]: %s", rid, raw)
            reasons.append(public_reason("headline", raw))
            metrics.DEGRADED.labels("recommendations", "headline").inc()
        timings["headline"] = round((time.perf_counter() - t1) * 1000, 2)

    fit = headline.fit if headline else {}
    items = [
        RecommendedItemOut(
            product_id=i.product_id,
            title=i.title,
            category=i.category,
            price=i.price,
            currency=i.currency,
            score=round(float(i.score), 6),
            retrieval_score=round(float(i.retrieval_score), 6),
            sources=i.sources,
            why=(i.why or source_reason(i.sources)) if body.explain else None,
            fit=fit.get(i.product_id),
        )
        for i in rec.items
    ]
    if body.explain:
        stages.append("explain")
    timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
    metrics.RECOMMENDATIONS.labels(body.rerank).inc()
    return RecommendationResponse(
        request_id=rid,
        items=items,
        stages=stages,
        rerank=body.rerank,
        degraded=bool(reasons),
        degraded_reason="; ".join(r for r in reasons if r) or None,
        rationale=rec.rationale if body.explain else None,
        headline=headline,
        model_id=rec.model_id,
        template=rec.template,
        template_version=rec.template_version,
        timings_ms=timings,
    )
