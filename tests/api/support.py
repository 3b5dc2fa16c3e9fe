"""Shared, session-scoped fixtures and helpers for the HTTP and browser tests (re-exported
by tests/api/conftest.py and tests/web/conftest.py): the real app over a temporary data
directory holding the demo catalogue, with the real default models (MiniLM encoder,
SmolLM2 prepared once under the repo's var/models)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings
from service.llm.prepare import prepare_model
from tests.foundation import REPO, make_recsmith

API_KEY = "test-key-1"
OTHER_KEY = "test-key-2"
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def llm_path() -> Path:
    """The default LLM, converted once into the repo's var/models (shared by all test runs)."""
    return prepare_model("smollm2", settings=Settings(data_dir=REPO / "var"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with the demo catalogue ingested and indexed; copied per app so
    apps never share index files."""
    d = tmp_path_factory.mktemp("demo-data")
    seed_embeddings(d)
    make_recsmith(d)
    keep_embeddings(d)
    return d


# Encoding the demo catalogue costs a minute on a busy CPU; the encoder's own cache (keyed
# by model and text hash, so it cannot serve a stale vector) is kept between test runs.
EMBED_CACHE = REPO / "var" / "cache" / "tests" / "embeddings.sqlite"


def _backup(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)  # consistent even while the source is open (WAL)


def seed_embeddings(data_dir: Path) -> None:
    if EMBED_CACHE.exists():
        with contextlib.suppress(Exception):  # a broken cache only costs time
            _backup(EMBED_CACHE, data_dir / "cache" / "embeddings.sqlite")


def keep_embeddings(data_dir: Path) -> None:
    src = data_dir / "cache" / "embeddings.sqlite"
    if src.exists():
        with contextlib.suppress(Exception):
            _backup(src, EMBED_CACHE)


def fresh_copy(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    dest = tmp_path_factory.mktemp(name) / "data"
    shutil.copytree(demo_dir, dest)
    return dest


def app_settings(data_dir: Path, llm_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": data_dir,
        "llm_model": str(llm_path),
        "api_keys": [API_KEY, OTHER_KEY],
        "llm_timeout_s": 120.0,
        # The real model on a busy shared CPU: budgets far above it (the budget tests set
        # their own).
        "rerank_timeout_s": 600.0,
        "headline_timeout_s": 600.0,
        # One writing round per text: retries are the copy stage's own tests' business, and
        # each costs a model call.
        "copy_max_retries": 0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(demo_dir: Path, llm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return app_settings(fresh_copy(demo_dir, tmp_path_factory, "api"), llm_path)


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    """Authenticated client; the lifespan (index sync, encoder warm-up) runs once."""
    with TestClient(app, headers=AUTH) as c:
        wait_llm(c)
        yield c
        quiesce(app)


@pytest.fixture(scope="session")
def anon(client: TestClient, app: FastAPI) -> TestClient:
    """The same running app, without a key (shares the lifespan of `client`)."""
    c = TestClient(app)
    return c


MODEL_THREADS = ("assistant-llm", "llm-stream")  # job runners: runner.shutdown()


def quiesce(app: FastAPI | None = None, timeout_s: float = 600) -> None:
    """Let model work started by requests finish before the process may exit: a thread
    still inside torch when the interpreter shuts down aborts the process. A client that
    leaves a stream early (the fuzzer does) stops generation at the next token."""
    application = getattr(app.state, "application", None) if app is not None else None
    runner = application.jobs if application is not None else None
    if runner is not None:
        runner.shutdown(timeout_s=timeout_s)
    end = time.monotonic() + timeout_s
    for t in threading.enumerate():
        if t.name in MODEL_THREADS and t is not threading.current_thread():
            t.join(timeout=max(0.0, end - time.monotonic()))


def wait_llm(c: TestClient, timeout_s: float = 300) -> None:
    """The LLM loads in the background after startup; model tests wait for it."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        state = c.get("/readyz").json()["checks"]["llm"].get("state")
        if state in {"ready", "failed", "unavailable"}:
            return
        time.sleep(0.2)


@pytest.fixture(scope="session")
def llm_down_client(
    demo_dir: Path, llm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """An app whose LLM backend is an OpenAI-compatible server that is not there."""
    port = free_port()
    s = app_settings(
        fresh_copy(demo_dir, tmp_path_factory, "llm-down"),
        llm_path,
        llm_backend="openai",
        llm_base_url=f"http://127.0.0.1:{port}/v1",
        llm_max_retries=0,
        llm_timeout_s=2.0,
    )
    app = create_app(s)
    with TestClient(app, headers=AUTH) as c:
        wait_llm(c)
        yield c
        quiesce(app)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server on a free loopback port, in a thread of this process."""

    def __init__(self, app: FastAPI) -> None:
        # lazy: uvicorn only for `recsmith serve`; other commands start faster
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        end = time.monotonic() + 300
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def demo_server(
    demo_dir: Path, llm_path: Path, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[LiveServer]:
    """A LiveServer over its own copy of the demo data; background work drained at the end."""
    app = create_app(app_settings(fresh_copy(demo_dir, tmp_path_factory, name), llm_path))
    with LiveServer(app) as server:
        yield server
        quiesce(app)


@pytest.fixture(scope="session")
def live_server(
    demo_dir: Path, llm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with demo_server(demo_dir, llm_path, tmp_path_factory, "live") as server:
        yield server


def parse_sse(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body; comments skipped."""
    out = []
    for block in text.split("\n\n"):
        event, data = "message", []
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            out.append((event, "\n".join(data)))
    return out


@pytest.fixture(scope="session")
def web_server(
    demo_dir: Path, llm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The server the browser tests drive (its own data dir: they write copy)."""
    with demo_server(demo_dir, llm_path, tmp_path_factory, "web") as server:
        yield server
