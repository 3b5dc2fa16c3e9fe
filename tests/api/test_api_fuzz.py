"""Property-based fuzzing of the whole OpenAPI document with schemathesis: valid and invalid
requests for every operation, against the real app and models. No 5xx, and every answer
matches the documented status codes, content types and schemas.

Bounded: a few examples per operation, the model-heavy knobs clamped (one example costs
seconds, not minutes; the unclamped values are covered by the deterministic tests), and a
wall-clock budget (RECSMITH_FUZZ_BUDGET_S, default 300 s) after which examples are skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.app import create_app
from tests.api.support import AUTH, app_settings, fresh_copy

BUDGET_S = float(os.environ.get("RECSMITH_FUZZ_BUDGET_S", "300"))
EXAMPLES = int(os.environ.get("RECSMITH_FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
_started: list[float] = []
_ran: list[str] = []


@pytest.fixture(scope="session")
def fuzz_app(
    demo_dir: Path, llm_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    s = app_settings(fresh_copy(demo_dir, tmp_path_factory, "fuzz"), llm_path, copy_max_retries=0)
    app = create_app(s)
    yield app
    runner = getattr(app.state, "copy_jobs", None)
    if runner is not None:  # jobs the fuzzer started must not outlive the test
        runner.shutdown()


@pytest.fixture(scope="session")
def fuzz_schema(fuzz_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


def bound_work(case: Any) -> None:
    """Clamp in-range values of the knobs that multiply model work."""
    body = case.body
    if not isinstance(body, dict):
        return
    path = case.operation.path

    def clamp(key: str, low: int, high: int) -> None:
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and low <= v and v > high:
            body[key] = high

    if path == "/v1/recommendations" and body.get("rerank") in ("verbalizer", "reasoning"):
        clamp("k", 1, 8)
    if path.startswith("/v1/copy"):
        ids = body.get("product_ids")
        if isinstance(ids, list) and len(ids) > 2:
            body["product_ids"] = ids[:2]
        clamp("variants", 1, 1)
        clamp("max_tokens", 8, 24)
        if path == "/v1/copy/jobs":
            clamp("limit", 1, 2)
            clamp("batch_size", 1, 2)
            body.setdefault("limit", 2)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any) -> None:
    if not _started:
        _started.append(time.monotonic())
    if time.monotonic() - _started[0] > BUDGET_S:
        return  # over budget: the remaining examples are skipped
    bound_work(case)
    _ran.append(case.operation.label)
    case.call_and_validate(headers=AUTH, checks=CHECKS)
