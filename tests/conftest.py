"""Session-wide test settings shared by every stage's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings, get_settings
from service.llm.prepare import prepare_model
from service.llm.vllm_server import VLLMServer, free_port, vllm_python

REPO = Path(__file__).resolve().parent.parent

# Every test data dir is temporary, but the prepared model (a ~1 minute GGUF conversion)
# is shared: Settings.models_dir comes from this variable (the Makefile sets it too).
os.environ.setdefault("RECSMITH_MODELS_DIR", str(REPO / "var" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The service default is multilingual-e5-small; tests index with MiniLM (3.5x faster), as
# they use the tiny LLM. tests/retrieval/test_multilingual.py runs e5 through the service.
os.environ.setdefault("RECSMITH_ENCODER_MODEL", "default")
# The service writes copy and chat with the `small` profile on llama.cpp; tests write with
# the tiny model (the llm_* settings) unless they ask for a writer profile.
os.environ.setdefault("RECSMITH_WRITER_BACKEND", "")
os.environ.setdefault("RECSMITH_WRITER_MODEL", "")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---- the prepared model, a temporary data dir, and ONE vLLM server per session ----------
# (moved from tests/llm/conftest.py, unchanged, so tests/llm and tests/ranking share them;
# see that file's docstring)
@pytest.fixture(scope="session")
def model_path() -> Path:
    root = Path(os.environ.get("RECSMITH_TEST_MODELS_DIR") or REPO / "var" / "models")
    return prepare_model("smollm2", out_root=root)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("llm-data")
    old = os.environ.get("RECSMITH_DATA_DIR")
    os.environ["RECSMITH_DATA_DIR"] = str(d)
    get_settings.cache_clear()
    yield d
    if old is None:
        os.environ.pop("RECSMITH_DATA_DIR", None)
    else:
        os.environ["RECSMITH_DATA_DIR"] = old
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings(model_path: Path, data_dir: Path) -> Settings:
    # One torch thread: on a shared 2-core box, 2 OpenMP threads under load were 4x slower.
    return Settings(
        data_dir=data_dir,
        llm_model=str(model_path),
        llm_threads=1,
        llm_timeout_s=180.0,  # the first logprobs request to vLLM on CPU can take ~25 s
    )


@pytest.fixture(scope="session")
def vllm_url(model_path: Path, settings: Settings) -> Iterator[str]:
    reuse = os.environ.get("RECSMITH_TEST_VLLM_URL")
    if reuse:
        yield reuse.rstrip("/")
        return
    python = vllm_python()
    if not python.exists():
        pytest.fail(
            f"vLLM tests need the vLLM interpreter at {python}, which is missing. "
            "Run `make vllm` (or set RECSMITH_VLLM_PYTHON to a Python that has vllm).",
            pytrace=False,
        )
    server = VLLMServer(
        model_path,
        port=free_port(),
        served_name=settings.llm_served_name,
        log_path=settings.data_dir / "vllm.log",
        pid_file=settings.data_dir / "vllm.pid",
        startup_timeout_s=420.0,  # ~65 s on an idle 2-core box; much more when it is shared
    )
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


# ---- the `database` parameter (sqlite | postgresql) that tests/api and tests/assistant
# give their tests in pytest_generate_tests; its PostgreSQL runs carry the marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database") == "postgresql":
            item.add_marker(pytest.mark.postgresql)


@pytest.fixture(scope="session")
def database(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))
