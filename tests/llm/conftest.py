"""Fixtures of the LLM contract suite.

- The model: the default SmolLM2 converted once into a shared cache, `REPO/var/models`
  (override with RECSMITH_TEST_MODELS_DIR). Conversion takes ~1 minute the first time and
  ~1 ms after (manifest check), so every test run and every developer reuses it.
- Data: each session gets its own temporary DATA_DIR (RECSMITH_DATA_DIR is pointed at it),
  so llm_calls rows and vllm.log never mix with a developer's database.
- vLLM: one real server per session (VLLMServer on a free port, with the prepared model),
  started the first time a vLLM test needs it, stopped at the end. If the vLLM interpreter
  (`.venv-vllm`, `make vllm`) is missing, the vLLM tests FAIL: CI installs it, and a
  silently skipped backend is a backend nobody tests. RECSMITH_TEST_VLLM_URL reuses an
  already running server instead (quicker when iterating on the tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from service.llm.base import LLM

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_path() -> Path:
    from service.llm.prepare import prepare_model

    root = Path(os.environ.get("RECSMITH_TEST_MODELS_DIR") or REPO / "var" / "models")
    return prepare_model("smollm2", out_root=root)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from service.config import get_settings

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
    from service.llm.vllm_server import VLLMServer, free_port, vllm_python

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


@pytest.fixture(scope="session")
def inproc(settings: Settings) -> LLM:
    from service.llm.transformers_backend import TransformersLLM

    return TransformersLLM(settings)


@pytest.fixture(scope="session")
def remote(settings: Settings, vllm_url: str) -> LLM:
    from service.llm.openai_backend import OpenAILLM

    return OpenAILLM(settings.model_copy(update={"llm_base_url": vllm_url}))


@pytest.fixture(
    scope="session",
    params=["transformers", pytest.param("vllm", marks=pytest.mark.vllm)],
)
def llm(request: pytest.FixtureRequest) -> LLM:
    """The contract suite: every test using this runs on both backends."""
    if request.param == "transformers":
        return request.getfixturevalue("inproc")
    return request.getfixturevalue("remote")
