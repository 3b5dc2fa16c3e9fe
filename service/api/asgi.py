"""The one shape of this API's middleware: pure ASGI (no BaseHTTPMiddleware, which would
buffer streamed responses), HTTP requests handled, everything else (lifespan, websockets)
passed through untouched."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request; `self.app` is the rest of the stack."""
        await self.app(scope, receive, send)
