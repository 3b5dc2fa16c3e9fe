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


@router.get("/", response_class=HTMLResponse, summary="The web page")
def index(request: Request) -> HTMLResponse:
    s = request.app.state.settings
    return templates.TemplateResponse(
        request,
        "index.html",
        {"needs_key": bool(s.api_keys), "version": request.app.version},
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
