"""The FastAPI application: `create_app(settings)` (uvicorn runs it with --factory).

The lifespan builds the Recsmith, brings the indexes in step with the catalogue and warms
the encoder before the first request; the LLM loads in the background (readyz reports it,
and until it is there model stages degrade instead of blocking startup).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from service.api import metrics
from service.api.deps import require_api_key
from service.api.errors import error_responses, install_error_handlers
from service.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from service.api.state import IndexState
from service.config import Settings, get_settings
from service.llm.log import prune_llm_calls
from service.recsmith import Recsmith

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


class LlmWarm:
    """Loads the configured LLM once, off the request path, and remembers how it went."""

    def __init__(self, rs: Recsmith) -> None:
        self.rs = rs
        self.status = "loading"
        self.error: str | None = None
        self.llm: Any = None
        self.thread = threading.Thread(target=self._run, name="llm-warm", daemon=True)

    def start(self) -> LlmWarm:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.llm = self.rs.llm()
            self.status = "ready"
        except Exception as e:  # noqa: BLE001 - reported by /readyz; requests degrade
            self.error = f"{type(e).__name__}: {e}"[:500]
            self.status = "failed"
            logger.warning("LLM did not load: %s", self.error)


def _boot(settings: Settings) -> Recsmith:
    rs = Recsmith(settings)
    rs.encoder.encode(["warm up"])  # loads the weights and runs one batch
    report = rs.sync_index()
    logger.info("index in step: %s", report.as_dict())
    try:  # shoppers' prompts are kept llm_log_retention_days, no longer
        prune_llm_calls(settings)
    except Exception:  # noqa: BLE001 - a log that cannot be pruned must not stop the API
        logger.warning("could not prune llm_calls", exc_info=True)
    return rs


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    try:
        rs = await run_in_threadpool(_boot, settings)
    except Exception as e:
        app.state.startup_error = f"{type(e).__name__}: {e}"
        raise
    app.state.recsmith = rs
    app.state.index = IndexState(rs)
    app.state.index_ready = True
    app.state.llm_warm = LlmWarm(rs).start()
    from service.api.jobs import resume_jobs  # copy jobs a dead process left running/queued

    await run_in_threadpool(resume_jobs, app)
    yield
    app.state.index_ready = False
    runner = getattr(app.state, "copy_jobs", None)
    if runner is not None:  # stop batch jobs between batches; they resume when restarted
        await run_in_threadpool(runner.shutdown, 30.0)


def _version() -> str:
    try:
        return version("recsmith")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
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
    install_error_handlers(app)
    metrics.listen_llm_calls()

    from service.api.routes import (
        assistant,
        copy,
        health,
        interactions,
        products,
        recommendations,
    )

    # Every /v1 router carries the prefix itself; the key check and the common error
    # responses are added here, once.
    for r in (recommendations.router, products.router, interactions.router, assistant.router,
              copy.router):  # fmt: skip
        app.include_router(
            r, dependencies=[Depends(require_api_key)], responses=error_responses(401, 413, 422)
        )
    app.include_router(health.router)

    from service.api import web

    web.install(app)

    # Outermost last: request id → metrics → API key → body limit → routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app
