"""Dependencies: the API key check and the Application (built once by the lifespan)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.application import Application

# Every versioned route lives under this prefix (routers carry it, so metrics see full
# route templates).
V1 = "/v1"

# auto_error=False: we answer a missing key ourselves, in the common error shape.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token")


def get_application(request: Request) -> Application:
    application = getattr(request.app.state, "application", None)
    if application is None:  # the lifespan has not run (or failed): not ready to serve
        raise ApiError(503, "the service is starting; try again shortly", code="starting")
    return application


def key_matches(given: str, keys: list[str]) -> bool:
    # Constant-time comparison against every key: no early exit that leaks which matched.
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given.encode(), k.encode())
    return ok


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="recsmith"'}


def key_error(given: str | None, keys: list[str]) -> ApiError | None:
    """The 401 for a missing or wrong key; None when the key is good or none is needed."""
    if not keys:
        return None
    if not given:
        return ApiError(
            401,
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            fields=[("X-API-Key", "missing")],
            headers=CHALLENGE,
        )
    if not key_matches(given, keys):
        return ApiError(401, "the API key is not valid", fields=[("X-API-Key", "not a valid key")],
                        headers=CHALLENGE)  # fmt: skip
    return None


def given_key(headers: dict[str, str]) -> str | None:
    """The key from X-API-Key, else from Authorization: Bearer (lower-case header names)."""
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def has_valid_key(request: Request) -> bool:
    """True when the request may see details: its key is good, or no keys are configured."""
    keys: list[str] = request.app.state.settings.api_keys
    return key_error(given_key(dict(request.headers)), keys) is None


def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Security(api_key_header)] = None,
    auth: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
) -> None:
    """Documents the key in OpenAPI and checks it again; ApiKeyMiddleware has already
    refused a bad key before the body was read."""
    err = key_error(x_api_key or (auth.credentials if auth else None),
                    request.app.state.settings.api_keys)  # fmt: skip
    if err is not None:
        raise err


App = Annotated[Application, Depends(get_application)]


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""
