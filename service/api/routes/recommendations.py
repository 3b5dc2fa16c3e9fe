"""POST /v1/recommendations: retrieve → (rerank) → (headline, explain) → respond."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api import metrics
from service.api.deps import V1, App, request_id
from service.api.errors import error_responses
from service.api.protocol import RecommendationRequest, RecommendationResponse

router = APIRouter(prefix=V1, tags=["recommendations"])


@router.post(
    "/recommendations",
    summary="Recommend products",
    description="For a known user, an explicit history, a query, or any mix of them. The "
    "retrieval shortlist is optionally reranked by the language model; if the model fails "
    "or is slow the shortlist order is served with `degraded: true` and the reason. "
    "`stages` lists what ran; `timings_ms` how long each stage took.",
    responses=error_responses(400, 404),
)
def recommendations(
    body: RecommendationRequest, app: App, request: Request
) -> RecommendationResponse:
    rid = request_id(request)
    rec = app.recommend(
        user_id=body.user_id,
        history=body.history,
        query=body.query,
        k=body.k,
        filters=body.filters,
        rerank=body.rerank,
        headline=body.headline,
        explain=body.explain,
        request_id=rid,
    )
    for stage in rec.degraded_stages:
        metrics.DEGRADED.labels("recommendations", stage).inc()
    metrics.RECOMMENDATIONS.labels(body.rerank).inc()
    return RecommendationResponse.from_domain(rec, rid)
