"""The read commands `search` and `similar` on the command line, over the demo catalogue:
their filter options reach the application, and bad input is one clear line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from service.cli import app
from service.config import get_settings
from tests.foundation import make_recsmith


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cli-read")
    make_recsmith(data)  # stores and indexes the demo catalogue
    return data


Run = Callable[..., Result]


@pytest.fixture
def run(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    monkeypatch.setenv("RECSMITH_DATA_DIR", str(demo_dir))
    get_settings.cache_clear()

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    yield invoke
    get_settings.cache_clear()


def test_similar_takes_the_repeatable_category_option(run: Run) -> None:
    # --category is repeatable, as on `search`: every category given is kept.
    result = run(
        "similar", "kit-0001", "--category", "Kitchen", "--category", "Coffee & Tea",
        "-k", "30", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and {r["category"] for r in rows} == {"Kitchen", "Coffee & Tea"}
    assert "kit-0001" not in {r["product_id"] for r in rows}

    one = json.loads(run("similar", "kit-0001", "--category", "Kitchen", "--json").stdout)
    assert one and {r["category"] for r in one} == {"Kitchen"}


def test_search_and_similar_refuse_bad_input_in_one_line(run: Run) -> None:
    unknown = run("similar", "no-such")
    assert unknown.exit_code == 2
    assert "unknown product id 'no-such'" in unknown.output and "Traceback" not in unknown.output
    empty = run("search", "  ")
    assert empty.exit_code == 2 and "the query is empty" in empty.output
