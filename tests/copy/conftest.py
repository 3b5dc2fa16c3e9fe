"""Fixtures of the copy tests: a temporary DATA_DIR with the demo catalogue ingested, and
the REAL default model in-process (prepared once into REPO/var/models, as tests/llm does).

`CountingLLM` is a thin pass-through around the real backend that records each generate
call's batch size: it is how the tests see "no model call" and "one call per batch".
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from service.catalog.ingest import ingest_file
from service.catalog.store import CatalogStore
from service.config import Settings
from service.copy.writer import CopyWriter
from service.llm.base import LLM, Generation, GenParams, Prompt
from service.prompts import PROMPTS_DIR, PromptLibrary

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "service" / "demo"
TEST_PROMPTS = Path(__file__).resolve().parent / "prompts"


class CountingLLM:
    """Delegates to a real LLM; counts generate calls and their prompts."""

    def __init__(self, inner: LLM) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.model_id = inner.model_id
        self.calls: list[int] = []  # batch size of each generate call

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, params)

    def reset(self) -> None:
        self.calls.clear()

    def __getattr__(self, name: str):  # noqa: ANN204 - stream, choice_logprobs, …
        return getattr(self.inner, name)


@pytest.fixture(scope="session")
def model_path() -> Path:
    from service.llm.prepare import prepare_model

    root = Path(os.environ.get("RECSMITH_TEST_MODELS_DIR") or REPO / "var" / "models")
    return prepare_model("smollm2", out_root=root)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """RECSMITH_DATA_DIR points here for the session (the CLI reads settings from env)."""
    from service.config import get_settings

    d = tmp_path_factory.mktemp("copy-data")
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
    # One torch thread (2 shared cores); one retry keeps the real-model tests short.
    s = Settings(data_dir=data_dir, llm_model=str(model_path), llm_threads=1, copy_max_retries=1)
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def catalog(settings: Settings) -> CatalogStore:
    store = CatalogStore(settings.db_url)
    report = ingest_file(store, DEMO / "products.jsonl", "products")
    assert report.stored > 0
    ingest_file(store, DEMO / "interactions.jsonl", "interactions")
    return store


@pytest.fixture(scope="session")
def real_llm(settings: Settings) -> LLM:
    from service.llm.factory import get_llm

    return get_llm(settings)


@pytest.fixture
def llm(real_llm: LLM) -> CountingLLM:
    return CountingLLM(real_llm)


@pytest.fixture
def writer(settings: Settings, catalog: CatalogStore, llm: CountingLLM) -> CopyWriter:
    return CopyWriter(settings, llm=llm, catalog=catalog)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def provoking_prompts(tmp_path_factory: pytest.TempPathFactory) -> PromptLibrary:
    """The real copy templates, with the summary and blurb tasks replaced by test-only
    ones that provoke an invented number and a banned claim (tests/copy/prompts)."""
    d = tmp_path_factory.mktemp("copy-prompts")
    for f in PROMPTS_DIR.glob("copy_*.j2"):
        shutil.copy(f, d / f.name)
    for f in TEST_PROMPTS.glob("*.j2"):
        shutil.copy(f, d / f.name)
    return PromptLibrary(d)
