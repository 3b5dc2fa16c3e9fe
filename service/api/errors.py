"""One error shape for every failure: {"error": {"code", "message", "fields": [...]}}.

Handlers turn validation errors, HTTP errors, unknown ids and an unreachable model into
4xx/503 JSON; anything else is a bug, logged with its traceback and answered with 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.protocol import ErrorBody, ErrorResponse, FieldError
from service.errors import DomainError, Invalid, NotFound, TooBusy
from service.llm.base import LLMError

logger = logging.getLogger("service.api")

# Stable machine-readable codes for the HTTP statuses we emit.
STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(HTTPException):
    """An error a route raises on purpose, with the fields it concerns.

    Subclasses FastAPI's HTTPException so that raising it while the body is read (the size
    limit does) passes through FastAPI's body parser unchanged."""

    def __init__(
        self,
        status_code: int,
        message: str,
        code: str | None = None,
        fields: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code or STATUS_CODES.get(status_code, "error")
        self.message = message
        self.fields = [FieldError(field=f, problem=p) for f, p in fields]


def error_payload(code: str, message: str, fields: Sequence[FieldError] = ()) -> dict[str, Any]:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, fields=list(fields)))
    return body.model_dump()


def error_response(
    status: int,
    code: str,
    message: str,
    fields: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_payload(code, message, fields), status_code=status, headers=headers)


def field_path(loc: Sequence[Any]) -> str:
    """('body', 'products', 3, 'price') -> 'products[3].price'; ('query', 'k') -> 'k'."""
    parts = list(loc)
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "body"


def _problem(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error")
        return f"invalid JSON: {detail}" if detail else "invalid JSON"
    # A model validator's ValueError reads "Value error, <message>": the message is enough.
    return msg.removeprefix("Value error, ")


def validation_fields(errors: Sequence[dict[str, Any]]) -> list[FieldError]:
    fields: list[FieldError] = []
    for err in errors:
        loc = list(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            # loc carries the character offset, which is no field name.
            pos = loc[1] if len(loc) > 1 else "?"
            fields.append(FieldError(field="body", problem=f"{_problem(err)} at char {pos}"))
            continue
        # Union members add their type name to the loc ('function-after[...]', 'str'):
        # noise to a client, so dropped.
        clean = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))]
        fields.append(FieldError(field=field_path(clean), problem=_problem(err)))
    return fields


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "is-instance"}


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    fields = validation_fields(errors)
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "invalid_json", "the request body is not valid JSON", fields)
    summary = "; ".join(f"{f.field}: {f.problem}" for f in fields[:5])
    return error_response(422, "invalid_request", f"invalid request: {summary}", fields)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.fields, headers)
    code = STATUS_CODES.get(exc.status_code, "error")
    message = str(exc.detail) if exc.detail else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, headers=headers)


async def _domain_handler(request: Request, exc: Exception) -> JSONResponse:
    """The application's domain errors: unknown id 404, unusable input 422, busy 429."""
    assert isinstance(exc, DomainError)
    fields = [FieldError(field=f, problem=p) for f, p in exc.fields]
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", exc.message, fields)
    if isinstance(exc, TooBusy):
        headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(429, "too_many_requests", exc.message, fields, headers)
    if isinstance(exc, Invalid):
        return error_response(422, "invalid_request", exc.message, fields)
    return error_response(400, "bad_request", exc.message, fields)


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


async def _llm_handler(request: Request, exc: Exception) -> JSONResponse:
    # Routes that need the model to answer at all (copy, chat) say so; recommendations
    # degrade instead and never get here.
    logger.warning("LLM unavailable on %s [request %s]: %s", request.url.path, _rid(request), exc)
    return error_response(
        503,
        "llm_unavailable",
        "the language model is unavailable; try again shortly",
        headers={"Retry-After": "5"},
    )


async def _bug_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception(
        "unhandled error on %s %s [request %s]", request.method, request.url.path, _rid(request)
    )
    return error_response(500, "internal_error", "internal error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(DomainError, _domain_handler)
    app.add_exception_handler(LLMError, _llm_handler)
    app.add_exception_handler(Exception, _bug_handler)


# The error responses every route may give, for the OpenAPI document.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed request (e.g. invalid JSON)",
        401: "Missing or wrong API key",
        404: "Unknown id",
        413: "Request body too large",
        422: "Invalid field(s); each is named in error.fields",
        503: "The language model is unavailable",
    }
    return {
        s: {"model": ErrorResponse, "description": descriptions.get(s, "Error")} for s in statuses
    }
