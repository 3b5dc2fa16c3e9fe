"""The web page: a chat with the assistant and a copy studio. Plain Jinja + vanilla JS,
no build step; the page calls the same /v1 API as any client (with the key from its own
key field, kept in localStorage)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(tags=["web"], include_in_schema=False)
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@router.get("/", response_class=HTMLResponse, summary="The web page")
def index(request: Request) -> HTMLResponse:
    s = request.app.state.settings
    response = templates.TemplateResponse(
        request,
        "index.html",
        {"needs_key": bool(s.api_keys), "version": request.app.version},
    )
    # Everything the page uses comes from this origin; product and model text is only ever
    # inserted as text, and this keeps injected markup inert even if that slipped.
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
