"""Fixtures for the reranker tests: the catalogue, a user, and the REAL default model
in-process (its llm_calls log goes to a temporary data dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.catalog.models import Product
from service.config import Settings
from service.llm.base import LLM
from service.llm.factory import get_llm
from service.llm.prepare import prepare_model
from service.ranking.base import UserContext
from tests.ranking.helpers import load_catalogue


@pytest.fixture(scope="session")
def catalogue() -> dict[str, Product]:
    return load_catalogue()


@pytest.fixture(scope="session")
def user(catalogue: dict[str, Product]) -> UserContext:
    kitchen = [p for p in catalogue.values() if p.category == "Kitchen"]
    return UserContext(history=(kitchen or list(catalogue.values()))[:3])


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A temporary data dir (the llm_calls log goes there) and the prepared default model."""
    model = prepare_model()  # converts once into the developer's var/models, then cached
    return Settings(data_dir=tmp_path_factory.mktemp("ranking-data"), llm_model=str(model))


@pytest.fixture(scope="session")
def real_llm(test_settings: Settings) -> LLM:
    return get_llm(test_settings)


@pytest.fixture
def fake_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)
