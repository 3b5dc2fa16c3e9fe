"""Dependencies: the API key check and the shared Recsmith (built once by the lifespan)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.api.state import IndexState
from service.config import Settings
from service.recsmith import Recsmith

# Every versioned route lives under this prefix (routers carry it, so metrics see full
# route templates).
V1 = "/v1"

# auto_error=False: we answer a missing key ourselves, in the common error shape.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_recsmith(request: Request) -> Recsmith:
    rs = getattr(request.app.state, "recsmith", None)
    if rs is None:  # the lifespan has not run (or failed): not ready to serve
        raise ApiError(503, "the service is starting; try again shortly", code="starting")
    return rs


def key_matches(given: str, keys: list[str]) -> bool:
    # Constant-time comparison against every key: no early exit that leaks which matched.
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given.encode(), k.encode())
    return ok


def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Security(api_key_header)] = None,
    auth: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    given = x_api_key or (auth.credentials if auth else None)
    challenge = {"WWW-Authenticate": 'Bearer realm="recsmith"'}
    if not given:
        raise ApiError(
            401,
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            fields=[("X-API-Key", "missing")],
            headers=challenge,
        )
    if not key_matches(given, keys):
        raise ApiError(401, "the API key is not valid", fields=[("X-API-Key", "not a valid key")],
                       headers=challenge)  # fmt: skip


RS = Annotated[Recsmith, Depends(get_recsmith)]


def get_index_state(request: Request) -> IndexState:
    get_recsmith(request)  # same readiness answer
    return request.app.state.index


Index = Annotated[IndexState, Depends(get_index_state)]


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""
