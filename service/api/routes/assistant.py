"""/v1/assistant: the chat shopping assistant, streamed as server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api import metrics
from service.api.deps import V1, App, request_id
from service.api.errors import error_payload, error_responses
from service.api.protocol import (
    CONVERSATION_ID_PATTERN,
    ChatFinal,
    ChatRequest,
    Conversation,
)
from service.recommend import public_reason

logger = logging.getLogger("service.api")
router = APIRouter(prefix=f"{V1}/assistant", tags=["assistant"])

SSE_DOC = (
    "A `text/event-stream`. Events, in order: any number of `token` "
    '(`data: {"text": "…"}`), then one `final` (`data`: the ChatFinal object: the answer, '
    "the cited product ids and a card per product). If the turn breaks after the stream "
    "started, an `error` event (`data`: the error object) ends it instead. With "
    '`"stream": false` the final object is returned as JSON.'
)


# One server-sent event (the stream is a sequence of these).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["token", "final", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": 'token: {"text"}; final: a ChatFinal; error: an ErrorResponse',
        },
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def sse(event: str, data: Any) -> bytes:
    # One JSON line per event: JSON never holds a raw newline, so no multi-line data.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _public_final(ev: dict[str, Any], rid: str) -> dict[str, Any]:
    """The final object with its degraded reason as a fixed phrase (the raw one is logged)."""
    final = {k: v for k, v in ev.items() if k != "type"}
    raw = final.get("degraded_reason")
    if raw:
        logger.warning("assistant answer degraded [request %s]: %s", rid, raw)
        final["degraded_reason"] = public_reason("answer", str(raw))
    return final


def _events(events: Iterator[dict[str, Any]], rid: str = "") -> Iterator[bytes]:
    yield b": stream open\n\n"  # flushes headers through proxies at once
    try:
        for ev in events:
            kind = ev.get("type")
            if kind == "token":
                yield sse("token", {"text": ev.get("text", "")})
            elif kind == "final":
                final = _public_final(ev, rid)
                if final.get("degraded"):
                    metrics.DEGRADED.labels("assistant.chat", "llm").inc()
                yield sse("final", final)
            else:
                yield sse(str(kind or "message"), ev)
    except Exception:  # noqa: BLE001 - the status line is sent: say it in the stream
        logger.exception("assistant stream failed [request %s]", rid)
        yield sse("error", error_payload("stream_failed", "the answer stream failed"))
    finally:
        close = getattr(events, "close", None)
        if close:
            close()  # stops the model when the client went away


@router.post(
    "/chat",
    summary="Chat with the shopping assistant (server-sent events)",
    description=SSE_DOC,
    response_model=ChatFinal,
    responses={
        200: {
            "description": "The token stream (or, with stream=false, the final object)",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **error_responses(400, 404),
    },
)
async def chat(body: ChatRequest, app: App, request: Request) -> Any:
    def start() -> Iterator[dict[str, Any]]:
        # Retrieval and the conversation lookup run before the first byte, so their errors
        # (unknown conversation or user) are ordinary 4xx responses.
        return app.chat(
            body.message, body.conversation_id, filters=body.filters, user_id=body.user_id
        )

    events = await run_in_threadpool(start)
    if not body.stream:

        def drain() -> dict[str, Any]:
            final: dict[str, Any] = {}
            for ev in events:
                if ev.get("type") == "final":
                    final = _public_final(ev, request_id(request))
            return final

        final = await run_in_threadpool(drain)
        if final.get("degraded"):
            metrics.DEGRADED.labels("assistant.chat", "llm").inc()
        return JSONResponse(ChatFinal.model_validate(final).model_dump(mode="json"))
    return StreamingResponse(
        _events(events, request_id(request)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/conversations/{conversation_id}",
    summary="A conversation with all its messages",
    responses=error_responses(404),
)
def conversation(
    conversation_id: Annotated[str, Path(pattern=CONVERSATION_ID_PATTERN)],
    app: App,
) -> Conversation:
    return Conversation.model_validate(app.conversation(conversation_id))
