"""Liveness, readiness and Prometheus metrics (unversioned, no API key: probes and
scrapers live inside the deployment)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import has_valid_key
from service.api.metrics import REGISTRY
from service.api.protocol import Health, Readiness
from service.application import Application, LlmWarm

logger = logging.getLogger("service.api")
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


def _check(fn: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
        ok = bool(out.pop("ok", True))
    except Exception:  # noqa: BLE001 - a failed check is reported, not raised
        logger.warning("readiness check failed", exc_info=True)
        out, ok = {"error": "check failed (see the server log)"}, False
    out["ok"] = ok
    out["ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return out


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: models loaded, store reachable, LLM backend state",
    description="503 until the store answers and the encoder and indexes are loaded. The "
    "LLM is reported (loading, ready, failed; for a vLLM server its circuit breaker) but "
    "does not decide readiness: without it recommendations are served degraded. Without a "
    "valid API key (when keys are configured) each check shows only `ok` and `state`.",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    application: Application | None = getattr(state, "application", None)
    checks: dict[str, dict[str, Any]] = {}
    if application is None:
        failed = getattr(state, "startup_error", None) is not None
        checks["startup"] = {"ok": False, "state": "failed" if failed else "starting"}
        return JSONResponse(Readiness(ready=False, checks=checks).model_dump(), status_code=503)
    checks["store"] = _check(lambda: {"products": application.catalog.count_products()})
    enc = application.encoder_loaded
    checks["encoder"] = _check(
        lambda: {
            "ok": enc is not None,
            "model_id": getattr(enc, "model_id", None),
            # "onnx" or "torch": auto falls back to torch (slower) with only a log warning
            "runtime": getattr(enc, "runtime", None),
        }
    )
    checks["index"] = _check(
        lambda: {
            "ok": bool(getattr(state, "index_ready", False)),
            "products": len(application.engine.dense),
        }
    )
    checks["llm"] = _llm_check(application.llm_warm)
    ready = all(checks[k]["ok"] for k in ("store", "encoder", "index"))
    if not has_valid_key(request):  # model ids can be filesystem paths: only the states
        checks = {
            name: {k: v for k, v in c.items() if k in ("ok", "state")} for name, c in checks.items()
        }
    body = Readiness(ready=ready, checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)


def _llm_check(warm: LlmWarm | None) -> dict[str, Any]:
    status = warm.status if warm else "not started"
    if status != "ready":
        error = "the model did not load (see the server log)" if status == "failed" else None
        return {"ok": False, "state": status, "error": error}
    out = _check(lambda: dict(warm.llm.health()))
    out["state"] = "ready" if out["ok"] else "unavailable"
    # Raw connection errors stay in the server log: the breaker's state is what tells.
    out.pop("server_detail", None)
    if isinstance(out.get("circuit"), dict):
        out["circuit"] = {k: v for k, v in out["circuit"].items() if k != "last_error"}
    return out


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
