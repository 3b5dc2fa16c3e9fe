"""The FastAPI application: `create_app(settings)` (uvicorn runs it with --factory).

The lifespan builds the Application (service/application.py: every service, once), brings
the indexes in step with the catalogue and warms the encoder before the first request; the
LLM loads in the background (readyz reports it, and until it is there model stages degrade
instead of blocking startup). Routes reach the Application through one dependency.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from service.api import metrics, web
from service.api.deps import require_api_key
from service.api.errors import error_responses, install_error_handlers
from service.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from service.api.routes import (
    assistant,
    copy,
    health,
    interactions,
    products,
    recommendations,
)
from service.application import Application
from service.config import Settings, get_settings

logger = logging.getLogger("service.api")

TAGS = [
    {"name": "recommendations", "description": "Personalised lists, optionally LLM-reranked"},
    {"name": "products", "description": "The catalogue: upsert, read, search, similar items"},
    {"name": "interactions", "description": "The interaction log (views, carts, purchases)"},
    {"name": "copy", "description": "Generated product copy: write, review, export"},
    {"name": "assistant", "description": "The chat shopping assistant (server-sent events)"},
    {"name": "health", "description": "Probes and metrics (no API key)"},
    {"name": "web", "description": "The web page"},
]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings

    def boot() -> Application:
        application = Application(settings, **app.state.seams)
        application.start()
        return application

    try:
        application = await run_in_threadpool(boot)
    except Exception as e:
        app.state.startup_error = f"{type(e).__name__}: {e}"
        raise
    app.state.application = application
    app.state.index_ready = True
    metrics.worker_started()
    yield
    app.state.index_ready = False
    # Stop batch jobs between batches; they resume when restarted.
    await run_in_threadpool(application.close, 30.0)
    metrics.worker_stopped()


def _version() -> str:
    try:
        return version("recsmith")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None, **seams: Any) -> FastAPI:
    """`seams` go to the Application's constructor (encoder, fusion, writer_llm,
    ranker_llm): tests and benchmarks swap parts there, never by patching attributes."""
    settings = settings or get_settings()
    app = FastAPI(
        title="recsmith",
        version=_version(),
        summary="Product recommendations reranked by a language model, and the words around them.",
        description=(
            "Every `/v1` route needs an API key when the service is configured with "
            "`RECSMITH_API_KEYS` (send `X-API-Key: <key>` or `Authorization: Bearer <key>`). "
            'Every error has one shape: `{"error": {"code", "message", "fields": '
            '[{"field", "problem"}]}}`.'
        ),
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.seams = seams
    install_error_handlers(app)
    metrics.listen_llm_calls()

    # Every /v1 router carries the prefix itself; the key check and the common error
    # responses are added here, once.
    for r in (recommendations.router, products.router, interactions.router, assistant.router,
              copy.router):  # fmt: skip
        app.include_router(
            r, dependencies=[Depends(require_api_key)], responses=error_responses(401, 413, 422)
        )
    app.include_router(health.router)

    web.install(app)

    # Outermost last: request id → metrics → API key → body limit → routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
