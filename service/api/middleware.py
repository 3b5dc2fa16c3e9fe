"""Pure ASGI middleware (streams pass through unbuffered): request ids, the API key and the
body limit."""

from __future__ import annotations

import json
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi import HttpMiddleware
from service.api.deps import V1, given_key, key_error
from service.api.errors import ApiError, error_payload
from service.api.protocol import FieldError

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware(HttpMiddleware):
    """Echoes a client's X-Request-ID (when sane) or mints one; routes read it from
    request.state.request_id and the LLM log tags carry it."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = ""
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                given = v.decode("latin-1")
                break
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"x-request-id", rid.encode("latin-1"))
                ]
            await send(message)

        await self.app(scope, receive, send_wrapper)


class ApiKeyMiddleware(HttpMiddleware):
    """Refuses a missing or wrong key on /v1 before anything reads the body: a client
    without a key learns nothing from parser or validation errors."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        super().__init__(app)
        self.keys = list(keys)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if not self.keys or not (path == V1 or path.startswith(V1 + "/")):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        err = key_error(given_key(headers), self.keys)
        if err is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(error_payload(err.code, err.message, err.fields)).encode()
        extra = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in (err.headers or {}).items()
        ]
        await send(
            {
                "type": "http.response.start",
                "status": err.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than {limit} bytes",
            fields=[("body", f"more than {limit} bytes")],
        )


class BodyLimitMiddleware(HttpMiddleware):
    """Refuses bodies over max_bytes: at once from Content-Length, or while reading a
    chunked body (the error raised inside receive() reaches the JSON error handler)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await _send_413(send, limit)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps(
        error_payload(
            "body_too_large",
            f"the request body is larger than {limit} bytes",
            [FieldError(field="body", problem=f"more than {limit} bytes")],
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
