"""Fixtures of the LLM contract suite. `model_path`, `data_dir`, `settings` and `vllm_url`
live in tests/conftest.py (shared, so a whole test session starts ONE vLLM server: the
reranker tests use it too); what they do is described here.

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

from pathlib import Path

import pytest

from service.config import Settings
from service.llm.base import LLM
from service.llm.llamacpp_backend import LlamaCppLLM
from service.llm.openai_backend import OpenAILLM
from service.llm.transformers_backend import TransformersLLM

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def inproc(settings: Settings) -> LLM:
    return TransformersLLM(settings)


@pytest.fixture(scope="session")
def remote(settings: Settings, vllm_url: str) -> LLM:
    return OpenAILLM(settings.model_copy(update={"llm_base_url": vllm_url}))


@pytest.fixture(scope="session")
def gguf(settings: Settings) -> LLM:
    """llama.cpp on the same model's GGUF (profile tiny). Missing llama-cpp-python FAILS
    (`make setup` builds it): a silently skipped backend is a backend nobody tests."""
    try:
        # lazy: llama_cpp loads a native library; only the llama.cpp backend needs it
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.fail("the llamacpp backend needs llama-cpp-python: run `make setup`", pytrace=False)

    return LlamaCppLLM(settings.model_copy(update={"llm_backend": "llamacpp", "llm_model": "tiny"}))


@pytest.fixture(
    scope="session",
    params=["transformers", "llamacpp", pytest.param("vllm", marks=pytest.mark.vllm)],
)
def llm(request: pytest.FixtureRequest) -> LLM:
    """The contract suite: every test using this runs on every backend."""
    name = {"transformers": "inproc", "llamacpp": "gguf", "vllm": "remote"}[request.param]
    return request.getfixturevalue(name)
